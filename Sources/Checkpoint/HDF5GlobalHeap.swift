import Foundation

/// A check of every HDF5 global heap collection in a file, before libhdf5 reads the file.
///
/// Variable-length strings (our checkpoints' `config`, `history` and `quantization` attributes, as h5py writes
/// them) live in global heap collections. libhdf5 1.10 (Debian's) trusts the object sizes stored there: on reading
/// a string it copies `size` bytes from the object, so one damaged size field makes it read far past the
/// collection (found by `fuzz-state`: a memcpy of 7e18 bytes in `H5HG_read`, a crash). It checks them only with
/// assertions, which release builds drop. This walk applies the rules its own decoder follows
/// (`H5HG__cache_heap_deserialize`) and refuses a collection that breaks them, so the library never sees one.
///
/// Layout (HDF5 File Format Specification 3.0, III.E "Global Heap"): "GCOL", version 1, 3 reserved bytes, the
/// collection size L (a length: `size of lengths` bytes, 8 in every file h5py or we write), then objects, each
/// an index (2 bytes), a reference count (2), 4 reserved bytes, its size (a length) and its data padded to a
/// multiple of 8. Index 0 is the free space: its size counts its header. Fewer than 16 bytes left are free space.
/// A collection is at least 4,096 bytes (H5HG_MINSIZE).
enum HDF5GlobalHeap {
    /// Throws `HDF5Failure` naming the offset of the first damaged collection. Files with a `size of lengths` other
    /// than 8 are refused when they hold a collection (nothing we read writes them).
    static func check(_ path: String) throws {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) else { return }
        try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            let bytes = raw.bindMemory(to: UInt8.self)
            let n = bytes.count
            func u64(_ at: Int) -> UInt64 { raw.loadUnaligned(fromByteOffset: at, as: UInt64.self).littleEndian }
            func u16(_ at: Int) -> Int { Int(raw.loadUnaligned(fromByteOffset: at, as: UInt16.self).littleEndian) }
            var lengths: Int? = nil
            var at = 0
            while let i = find(bytes, from: at) {
                at = i + 4
                guard i + 16 <= n, bytes[i + 4] == 1 else { continue }
                if lengths == nil { lengths = sizeOfLengths(bytes) }
                guard lengths == 8 else {
                    throw HDF5Failure(
                        message:
                            "the file's lengths are \(lengths ?? 0) bytes wide (expected 8, as h5py and compress write)"
                    )
                }
                let size = u64(i + 8)
                guard size >= 4096, size <= UInt64(n - i) else {
                    throw HDF5Failure(
                        message:
                            "global heap collection at byte \(i) declares \(size) bytes (expected 4,096 or more, "
                                + "within the file's \(n))")
                }
                let end = i + Int(size)
                var p = i + 16
                while p < end {
                    if p + 16 > end { break }  // too small for an object header: free space
                    let index = u16(p), objectSize = u64(p + 8)
                    let need: UInt64 = index > 0 ? 16 &+ ((objectSize &+ 7) & ~7) : objectSize
                    guard objectSize < UInt64(Int.max / 2), need <= UInt64(end - p) else {
                        throw HDF5Failure(
                            message:
                                "global heap collection at byte \(i) is damaged: object \(index) of \(objectSize) "
                                    + "bytes "
                                          + "at byte \(p) runs past the collection's end (byte \(end))")
                    }
                    // libhdf5 steps by `need` without checking it: an empty free-space record loops it forever (found
                    // by fuzz-state as a hang).
                    guard need > 0 else {
                        throw HDF5Failure(
                            message: "global heap collection at byte \(i) is damaged: an empty free-space record "
                                          + "at byte \(p)")
                    }
                    p += Int(need)
                }
            }
        }
    }

    /// The next "GCOL" at or after `from`.
    private static func find(_ b: UnsafeBufferPointer<UInt8>, from: Int) -> Int? {
        var i = from
        while i + 4 <= b.count {
            guard let base = b.baseAddress, let hit = memchr(base + i, 0x47, b.count - i - 3) else { return nil }
            let j = base.distance(to: hit.assumingMemoryBound(to: UInt8.self))
            if b[j + 1] == 0x43, b[j + 2] == 0x4F, b[j + 3] == 0x4C { return j }
            i = j + 1
        }
        return nil
    }

    /// The superblock's `size of lengths` (searched at 0, 512, 1024, … as libhdf5 does), or nil without one.
    private static func sizeOfLengths(_ b: UnsafeBufferPointer<UInt8>) -> Int? {
        let signature: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0D, 0x0A, 0x1A, 0x0A]
        var at = 0
        while at + 16 <= b.count {
            if Array(b[at..<(at + 8)]) == signature {
                // Versions 0 and 1: offsets and lengths sizes at bytes 13 and 14; versions 2 and 3: at 9 and 10.
                return Int(b[at + 8] <= 1 ? b[at + 14] : b[at + 10])
            }
            at = at == 0 ? 512 : at * 2
        }
        return nil
    }
}
