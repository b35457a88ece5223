import CHDF5
import Foundation
import TensorCore

/// A failure inside the HDF5 library, with the object it concerned and the library's own reason (its error
/// stack at the time of the failure); we add a hint only where the library names the cause.
struct HDF5Failure: Error, CustomStringConvertible {
    let message: String
    var description: String { message }

    init(message: String) {
        var reason = Self.libraryReason()
        if reason.count > 600 { reason = String(reason.prefix(600)) + "…" }
        var text = reason.isEmpty ? message : "\(message): HDF5: \(reason)"
        // The system's reason (ENOSPC, EFBIG, EIO…) is buried in the library's stack: lead with it.
        if let cause = Self.systemCause(reason) { text = "\(message): \(cause); HDF5: \(reason)" }
        if reason.contains("unable to lock the file") {
            text +=
                " (another process holds the file open, e.g. for writing; close it, or set HDF5_USE_FILE_LOCKING=FALSE "
                    + "to turn HDF5's file locking off)"
        }
        self.message = text
    }

    /// "No space left on device (errno 28)" from a stack holding "errno = 28, error message = '…'".
    static func systemCause(_ reason: String) -> String? {
        guard let r = reason.range(of: "errno = ") else { return nil }
        let digits = reason[r.upperBound...].prefix { $0.isNumber }
        guard let errno = Int32(digits), errno > 0 else { return nil }
        return "\(String(cString: strerror(errno))) (errno \(errno))"
    }

    /// A failure we found ourselves (the library's error stack does not concern it).
    init(plain message: String) { self.message = message }

    /// The descriptions on HDF5's default error stack, outermost first ("" if it is empty).
    static func libraryReason() -> String {
        var buffer = [CChar](repeating: 0, count: 2048)
        buffer.withUnsafeMutableBufferPointer { h5_error_stack($0.baseAddress, $0.count) }
        return String(cString: buffer)
    }
}

/// An open HDF5 file: the few operations checkpoints need, each checking the C library's status.
final class H5File {
    let id: hid_t
    let path: String
    /// Bytes on disk (read-only files): no dataset may declare more than this (checked before allocating).
    let fileBytes: Int?

    private init(id: hid_t, path: String, fileBytes: Int?) {
        self.id = id
        self.path = path
        self.fileBytes = fileBytes
    }

    private var isOpen = true

    /// The file is closed exactly once: by `close()`, or here when an error unwound past it.
    deinit { if isOpen { H5Fclose(id) } }

    /// Closes the file (once; later calls do nothing).
    func close() throws {
        guard isOpen else { return }
        isOpen = false
        guard H5Fclose(id) >= 0 else { throw HDF5Failure(message: "closing the file failed") }
    }

    /// Whether the file carries an HDF5 signature (false for any other file).
    static func isHDF5(_ path: String) -> Bool {
        initialize()
        return H5Fis_hdf5(path) > 0
    }

    static func openReadOnly(_ path: String) throws -> H5File {
        initialize()
        var st = stat()
        let size = stat(path, &st) == 0 ? Int(st.st_size) : 0
        try HDF5GlobalHeap.check(path)
        let id = H5Fopen(path, h5f_acc_rdonly(), h5p_default())
        guard id >= 0 else { throw HDF5Failure(message: "HDF5 could not open the file") }
        return H5File(id: id, path: path, fileBytes: size)
    }

    /// Creates (truncating) a file whose format allows large attributes (HDF5 1.8 object headers). Closing
    /// it closes every object still open in it (strong close degree), so an error path closes it exactly once.
    static func create(_ path: String) throws -> H5File {
        initialize()
        let fapl = H5Pcreate(h5p_file_access())
        defer { H5Pclose(fapl) }
        H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V110)
        H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG)
        let id = H5Fcreate(path, h5f_acc_trunc(), h5p_default(), fapl)
        guard id >= 0 else { throw HDF5Failure(message: "HDF5 could not create the file") }
        return H5File(id: id, path: path, fileBytes: nil)
    }

    private static let initialized: Bool = {
        // No exit-time cleanup: after a failed close (a full disk) the library keeps a half-closed file, and
        // its atexit handler would flush it again and crash. We close every file we open ourselves.
        H5dont_atexit()
        H5open()
        h5_silence_errors()  // errors are reported by us, with context, not printed by the library
        return true
    }()
    private static func initialize() { _ = initialized }

    // MARK: Attributes (on the root group)

    func hasAttribute(_ name: String) -> Bool { H5Aexists(id, name) > 0 }

    /// Writes a variable-length UTF-8 string attribute (what h5py writes for a Python str).
    func setString(_ name: String, _ value: String) throws {
        let type = H5Tcopy(h5_c_s1())
        defer { H5Tclose(type) }
        H5Tset_size(type, h5t_variable())
        H5Tset_cset(type, H5T_CSET_UTF8)
        let space = H5Screate(H5S_SCALAR)
        defer { H5Sclose(space) }
        if hasAttribute(name) { H5Adelete(id, name) }
        let attr = H5Acreate2(id, name, type, space, h5p_default(), h5p_default())
        guard attr >= 0 else { throw HDF5Failure(message: "could not create attribute '\(name)'") }
        defer { H5Aclose(attr) }
        let status = value.withCString { cstr -> herr_t in
            var p: UnsafePointer<CChar>? = cstr
            return H5Awrite(attr, type, &p)
        }
        guard status >= 0 else { throw HDF5Failure(message: "could not write attribute '\(name)'") }
    }

    /// Reads a string attribute, fixed- or variable-length.
    func string(_ name: String) throws -> String {
        let attr = H5Aopen(id, name, h5p_default())
        guard attr >= 0 else { throw HDF5Failure(message: "attribute '\(name)' is missing") }
        defer { H5Aclose(attr) }
        let ftype = H5Aget_type(attr)
        defer { H5Tclose(ftype) }
        guard H5Tget_class(ftype) == H5T_STRING else {
            throw HDF5Failure(message: "attribute '\(name)' is not a string")
        }
        if H5Tis_variable_str(ftype) > 0 {
            let mem = H5Tcopy(h5_c_s1())
            defer { H5Tclose(mem) }
            H5Tset_size(mem, h5t_variable())
            H5Tset_cset(mem, H5T_CSET_UTF8)
            var p: UnsafeMutablePointer<CChar>?
            guard H5Aread(attr, mem, &p) >= 0, let p else {
                throw HDF5Failure(message: "could not read attribute '\(name)'")
            }
            defer { H5free_memory(p) }
            return String(cString: p)
        }
        let size = H5Tget_size(ftype)
        var bytes = [UInt8](repeating: 0, count: size + 1)
        guard H5Aread(attr, ftype, &bytes) >= 0 else {
            throw HDF5Failure(message: "could not read attribute '\(name)'")
        }
        return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }

    func setInt(_ name: String, _ value: Int) throws {
        let space = H5Screate(H5S_SCALAR)
        defer { H5Sclose(space) }
        if hasAttribute(name) { H5Adelete(id, name) }
        let attr = H5Acreate2(id, name, h5_std_i64le(), space, h5p_default(), h5p_default())
        guard attr >= 0 else { throw HDF5Failure(message: "could not create attribute '\(name)'") }
        defer { H5Aclose(attr) }
        var v = Int64(value)
        guard H5Awrite(attr, h5_native_int64(), &v) >= 0 else {
            throw HDF5Failure(message: "could not write attribute '\(name)'")
        }
    }

    func int(_ name: String) throws -> Int {
        let attr = H5Aopen(id, name, h5p_default())
        guard attr >= 0 else { throw HDF5Failure(message: "attribute '\(name)' is missing") }
        defer { H5Aclose(attr) }
        let ftype = H5Aget_type(attr)
        defer { H5Tclose(ftype) }
        guard H5Tget_class(ftype) == H5T_INTEGER else {
            throw HDF5Failure(message: "attribute '\(name)' is not an integer")
        }
        var v: Int64 = 0
        guard H5Aread(attr, h5_native_int64(), &v) >= 0 else {
            throw HDF5Failure(message: "could not read attribute '\(name)'")
        }
        return Int(v)
    }

    // MARK: Groups and datasets

    func createGroup(_ name: String) throws {
        let g = H5Gcreate2(id, name, h5p_default(), h5p_default(), h5p_default())
        guard g >= 0 else { throw HDF5Failure(message: "could not create group '\(name)'") }
        H5Gclose(g)
    }

    func exists(_ name: String) -> Bool { H5Lexists(id, name, h5p_default()) > 0 }

    /// Names of the links directly under a group ("/" for the root), in name order.
    func members(_ group: String) throws -> [String] {
        let g = H5Gopen2(id, group, h5p_default())
        guard g >= 0 else { throw HDF5Failure(message: "could not open group '\(group)'") }
        defer { H5Gclose(g) }
        var info = H5G_info_t()
        guard H5Gget_info(g, &info) >= 0 else { throw HDF5Failure(message: "could not list group '\(group)'") }
        var names: [String] = []
        for i in 0..<info.nlinks {
            let len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nil, 0, h5p_default())
            guard len >= 0 else { throw HDF5Failure(message: "could not read a link name in '\(group)'") }
            var buf = [CChar](repeating: 0, count: Int(len) + 1)
            H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, &buf, buf.count, h5p_default())
            names.append(String(cString: buf))
        }
        return names
    }

    /// Element kind and shape of a dataset.
    struct DatasetInfo {
        let typeClass: H5T_class_t
        let typeSize: Int
        let shape: [Int]
        var unsigned = false
        var typeDescription: String {
            switch typeClass {
            case H5T_FLOAT: return "float\(typeSize * 8)"
            case H5T_INTEGER: return "\(unsigned ? "uint" : "int")\(typeSize * 8)"
            case H5T_STRING: return "string"
            default: return "HDF5 type class \(typeClass.rawValue)"
            }
        }
    }

    func datasetInfo(_ name: String) throws -> DatasetInfo {
        let ds = H5Dopen2(id, name, h5p_default())
        guard ds >= 0 else { throw HDF5Failure(message: "could not open dataset '\(name)'") }
        defer { H5Dclose(ds) }
        let type = H5Dget_type(ds)
        defer { H5Tclose(type) }
        let space = H5Dget_space(ds)
        defer { H5Sclose(space) }
        let rank = H5Sget_simple_extent_ndims(space)
        guard rank >= 0 else { throw HDF5Failure(message: "could not read the shape of '\(name)'") }
        guard rank <= 8 else { throw HDF5Failure(message: "dataset '\(name)' has rank \(rank) (expected at most 8)") }
        var dims = [hsize_t](repeating: 0, count: Int(rank))
        H5Sget_simple_extent_dims(space, &dims, nil)
        let typeClass = H5Tget_class(type), typeSize = H5Tget_size(type)
        // Every reader allocates from this shape: a declared size the file cannot hold is refused here, first.
        var bytes = typeSize
        for d in dims {
            let (p, overflow) = bytes.multipliedReportingOverflow(by: Int(clamping: d))
            guard !overflow, d <= hsize_t(Int.max) else { bytes = .max; break }
            bytes = p
        }
        if let fileBytes, bytes > fileBytes {
            throw HDF5Failure(
                plain:
                    "dataset '\(name)' declares shape \(dims.map { Int(clamping: $0) }) of \(typeSize)-byte elements "
                        + "(\(bytes == .max ? "more than 2^63" : String(bytes)) bytes), more than the whole file "
                        + "(\(fileBytes) bytes)")
        }
        var info = DatasetInfo(typeClass: typeClass, typeSize: typeSize, shape: dims.map { Int($0) })
        info.unsigned = typeClass == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_NONE
        return info
    }

    /// Writes a dataset of `count` elements of a native type with the given shape.
    func write(_ name: String, shape: [Int], fileType: hid_t, memType: hid_t, data: UnsafeRawPointer) throws {
        var dims = shape.map { hsize_t($0) }
        let space = H5Screate_simple(Int32(dims.count), &dims, nil)
        defer { H5Sclose(space) }
        let ds = H5Dcreate2(id, name, fileType, space, h5p_default(), h5p_default(), h5p_default())
        guard ds >= 0 else { throw HDF5Failure(message: "could not create dataset '\(name)'") }
        defer { H5Dclose(ds) }
        guard H5Dwrite(ds, memType, h5s_all(), h5s_all(), h5p_default(), data) >= 0 else {
            throw HDF5Failure(message: "could not write dataset '\(name)'")
        }
    }

    /// Reads a whole dataset, converted to `memType`, into `data` (sized by the caller from `datasetInfo`).
    func read(_ name: String, memType: hid_t, into data: UnsafeMutableRawPointer) throws {
        let ds = H5Dopen2(id, name, h5p_default())
        guard ds >= 0 else { throw HDF5Failure(message: "could not open dataset '\(name)'") }
        defer { H5Dclose(ds) }
        guard H5Dread(ds, memType, h5s_all(), h5s_all(), h5p_default(), data) >= 0 else {
            throw HDF5Failure(message: "could not read dataset '\(name)'")
        }
    }
}

/// HDF5 type ids used by the checkpoint format.
enum H5Types {
    static var float32File: hid_t { h5_ieee_f32le() }
    static var float32: hid_t { h5_native_float() }
    static var uint8File: hid_t { h5_std_u8le() }
    static var uint8: hid_t { h5_native_uint8() }
    /// IEEE half precision, little-endian (the type h5py writes for numpy float16), used in file and memory.
    static let float16: hid_t = {
        let t = H5Tcopy(h5_ieee_f32le())
        H5Tset_fields(t, 15, 10, 5, 0, 10)
        H5Tset_size(t, 2)
        H5Tset_ebias(t, 15)
        return t
    }()
}

extension H5File {
    /// Reads a float32 dataset into a tensor. `label` names it in errors; `expected`, when given, is the
    /// shape it must have.
    func readFloat32(_ key: String, label: String, expected: [Int]? = nil) throws -> Tensor {
        let info = try datasetInfo(key)
        guard info.typeClass == H5T_FLOAT, info.typeSize == 4 else {
            throw CheckpointError.wrongType(path: path, tensor: label, expected: "float32", found: info.typeDescription)
        }
        if let expected, info.shape != expected {
            throw CheckpointError.shapeMismatch(path: path, tensor: label, expected: expected, found: info.shape)
        }
        let t = Tensor(shape: info.shape)
        try read(key, memType: H5Types.float32, into: t.data)
        let p = t.data
        for i in 0..<t.count where !p[i].isFinite {
            throw CheckpointError.nonFinite(path: path, tensor: label, index: i, value: p[i])
        }
        return t
    }
}
