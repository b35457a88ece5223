import Diagnostics
import Foundation
import MappedIO
import Model
import SafeFiles
import TensorCore

/// A base model's next-token distributions over a token stream, kept compactly (issue 30). Two kinds:
/// - `hidden` (the default): per scored position the base's final hidden state (what its LM head multiplies, C
///   Float32s) and the correct token's log-probability. With the base's LM head (the base checkpoint, whose content
///   hash the header holds) this gives the base's whole distribution again, exactly: the same floats the base's own
///   forward gives, so every figure is the full-vocabulary one. 4C + 4 bytes per position (SmolLM2: 2,308, 1/42.6 of
///   llama.cpp's 2V = 98,304 16-bit log-probs; Gemma 3 270M: 1/204).
/// - `topk`: per position the top-k ids and log-probabilities, the log of the remaining mass and the correct token's
///   log-probability (`topKLogSoftmax`): KL_k with its bound (TopK.swift), without the base at compare time;
///   8k + 8 bytes per position. Its error on SmolLM2 (benchmarks/README.md, "Base references") is why it is not the
///   default.
/// Computed once per (base, tokens, window, protocol, kind, k), stored in the cache directory and memory-mapped.
///
/// File (little-endian): "CPREFK01", UInt64 n, n bytes of JSON `Header`, zero padding to a multiple of 64, then
/// `hidden`: hidden Float32[P·C], targetLogProbs Float32[P]; `topk`: ids Int32[P·k], logProbs Float32[P·k] (each row
/// descending), logRest Float32[P], targetLogProbs Float32[P]; P = positions.
public final class BaseReference: @unchecked Sendable {
    /// What a reference keeps per position.
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case hidden, topk
    }

    public struct Header: Codable, Equatable, Sendable {
        public var format = 1
        /// "hidden" or "topk" (`Kind`).
        public var kind: String
        /// The hidden size C (`hidden`; 0 for `topk`).
        public var hidden: Int
        /// The base checkpoint and its content hash.
        public var basePath: String
        public var baseHash: String
        /// FNV-1a of the stream tokens the windows cover (little-endian Int32s) and their count.
        public var tokensHash: String
        public var protocolName: String
        public var bos: Int32?
        public var window: Int
        public var maxTokens: Int?
        /// k of a `topk` reference (0 for `hidden`).
        public var k: Int
        public var vocab: Int
        public var windows: Int
        public var positions: Int
        /// Σ over the positions of the base's NLL (Double, as `Perplexity.evaluate` sums it): its PPL without another
        /// forward. Not part of the key.
        public var totalNll: Double? = nil

        /// The base's perplexity on these windows.
        public var ppl: Double? { totalNll.map { Foundation.exp($0 / Double(positions)) } }

        public var scoring: PerplexityProtocol {
            PerplexityProtocol(kind: PerplexityProtocol.Kind(rawValue: protocolName) ?? .pinned, bos: bos)
        }

        /// The identity of a reference: every field but the base's path (a moved base is the same base).
        func sameKey(_ o: Header) -> Bool {
            var a = self, b = o
            a.basePath = ""; b.basePath = ""; a.totalNll = nil; b.totalNll = nil
            return a == b
        }
    }

    static let magic = Array("CPREFK01".utf8)
    /// k when none is given: chosen on SmolLM2 (benchmarks/README.md, "Top-k reference").
    public static let defaultTopK = 64
    public let path: String
    public let header: Header
    private let file: MappedFile
    /// `hidden`: the base's final hidden states, positions × C.
    public let hiddenStates: UnsafePointer<Float>
    /// `topk`: ids, log-probabilities (positions × k), log rest mass (positions).
    public let ids: UnsafePointer<Int32>
    public let logProbs: UnsafePointer<Float>
    public let logRest: UnsafePointer<Float>
    public let targetLogProbs: UnsafePointer<Float>

    /// Bytes per position of a reference, header aside: 4C + 4 (`hidden`) or 8k + 8 (`topk`).
    public static func bytesPerPosition(_ h: Header) -> Int {
        h.kind == Kind.topk.rawValue ? 8 * h.k + 8 : 4 * h.hidden + 4
    }

    /// The header a reference of these settings would carry (no forward pass): `k` nil for a `hidden` reference.
    public static func header(
        basePath: String, baseHash: String, vocab V: Int, hidden C: Int, tokens: [Int32], window W: Int,
        protocol p: PerplexityProtocol, maxTokens: Int?, k: Int?
    ) throws -> Header {
        let windows = try Perplexity.plan(tokens: tokens, window: W, protocol: p, maxTokens: maxTokens, vocab: V)
        let covered = tokens.prefix(p.streamTokensCovered(windows: windows, window: W))
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for t in covered {
            for s in stride(from: 0, to: 32, by: 8) {
                h = (h ^ UInt64((UInt32(bitPattern: t) >> UInt32(s)) & 0xff)) &* 0x100_0000_01b3
            }
        }
        return Header(
            kind: (k == nil ? Kind.hidden : .topk).rawValue, hidden: k == nil ? C : 0, basePath: basePath,
            baseHash: baseHash,
            tokensHash: String(format: "%016llx-%d", h, covered.count),
            protocolName: p.kind.rawValue, bos: p.bos, window: W, maxTokens: maxTokens, k: k ?? 0, vocab: V,
            windows: windows, positions: windows * p.predictedPerWindow(W))
    }

    /// The cache file name of a header: its key hashed.
    public static func fileName(_ h: Header) -> String {
        var key = h
        key.basePath = ""; key.totalNll = nil
        let json = (try? JSONEncoder.sorted.encode(key)) ?? Data()
        var x: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in json { x = (x ^ UInt64(b)) &* 0x100_0000_01b3 }
        return String(format: "reference-%016llx.bin", x)
    }

    /// Computes the reference of `header` (from `base` over `tokens`) and writes it to `path` atomically.
    public static func build(base: DecoderModel, tokens: [Int32], header given: Header, to path: String,
                             progress: ((Int, Int) -> Void)? = nil) throws {
        var h = given
        let V = base.config.vocabSize, C = base.config.hiddenSize, k = h.k, p = h.scoring, W = h.window, P = h.positions
        let topK = h.kind == Kind.topk.rawValue
        guard V == h.vocab else { throw EvaluationError("\(h.basePath): vocabulary \(V), the reference's \(h.vocab)") }
        guard topK ? (k >= 1 && k <= V) : h.hidden == C else {
            throw EvaluationError(
                topK
                    ? "top-k must lie in 1...\(V) (the vocabulary), got \(k)"
                    : "\(h.basePath): hidden size \(C), the reference's \(h.hidden)")
        }
        // log-probs, or hidden states
        let main = UnsafeMutableBufferPointer<Float>.allocate(capacity: topK ? P * k : P * C)
        let ids = UnsafeMutableBufferPointer<Int32>.allocate(capacity: topK ? P * k : 0)
        let logRest = UnsafeMutableBufferPointer<Float>.allocate(capacity: topK ? P : 0)
        let target = UnsafeMutableBufferPointer<Float>.allocate(capacity: P)
        defer { main.deallocate(); ids.deallocate(); logRest.deallocate(); target.deallocate() }
        let per = p.predictedPerWindow(W)
        var nll = [Double](repeating: 0, count: Perplexity.rowsPerChunk(vocab: V)), total = 0.0
        Perplexity.forEachScoredChunk(
            model: base, tokens: tokens, window: W, protocol: p, windows: h.windows, progress: progress
        ) {
            w, windowIDs, t0, rows, hidden, logits in
            let pos = w * per + (t0 - p.firstScored(W))
            if topK {
                topKLogSoftmax(
                    ids: ids.baseAddress! + pos * k, logProbs: main.baseAddress! + pos * k,
                    logRest: logRest.baseAddress! + pos,
                    targetLogProbs: nil, targets: nil, logits: logits, rows: rows, columns: V, k: k)
            } else {
                (main.baseAddress! + pos * C).update(from: hidden, count: rows * C)
            }
            windowIDs.withUnsafeBufferPointer { idp in
                crossEntropyForward(
                    nll: &nll, logits: logits, targets: idp.baseAddress! + t0 + 1, rows: rows, columns: V)
            }
            // The correct token's log-probability as the evaluator computes it (`crossEntropyForward`), so that the
            // base's per-position NLL and its PPL are `Perplexity.evaluate`'s.
            for i in 0..<rows { total += nll[i]; target[pos + i] = Float(-nll[i]) }
        }
        guard main.allSatisfy(\.isFinite), target.allSatisfy(\.isFinite) else {
            throw EvaluationError(
                "\(h.basePath): the base's hidden states or log-probabilities are not finite (NaN or infinite values)")
        }
        h.totalNll = total
        var data = Data(magic)
        let json = try JSONEncoder.sorted.encode(h)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { data.append(contentsOf: $0) }
        data.append(json)
        data.append(Data(count: (64 - data.count % 64) % 64))
        if topK { data.append(UnsafeBufferPointer(ids)) }
        data.append(UnsafeBufferPointer(main))
        if topK { data.append(UnsafeBufferPointer(logRest)) }
        data.append(UnsafeBufferPointer(target))
        let tmp = SafeFiles.temporaryPath(for: path)
        do {
            try data.write(to: URL(fileURLWithPath: tmp))
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
            try FileManager.default.moveItem(atPath: tmp, toPath: path)
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw EvaluationError("cannot write the base reference (\(error.localizedDescription))",
                ErrorContext(file: path))
        }
    }

    /// Maps a reference file and checks it whole: magic, header (equal to `expected` but for the base's path, when
    /// given), size, ids in the vocabulary, finite non-positive log-probabilities descending in each row.
    public init(path: String, expected: Header? = nil) throws {
        self.path = path
        // Mapping failures are evaluation errors too: `cached` rebuilds a reference it cannot use.
        do { file = try MappedFile(path: path) } catch let e as MappedFileError {
            throw EvaluationError(e.reason, ErrorContext(file: path))
        }
        let b = file.bytes
        func bad(_ why: String) -> EvaluationError {
            EvaluationError("not a valid base reference: \(why)", ErrorContext(file: path))
        }
        guard b.count >= 16, Array(b[0..<8]) == Self.magic else { throw bad("no CPREFK01 magic") }
        let n = Int(UInt64(littleEndian: b.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
        guard n > 0, n <= b.count - 16 else { throw bad("header length \(n) does not fit the file (\(b.count) bytes)") }
        let h: Header
        do { h = try JSONDecoder().decode(Header.self, from: Data(b[16..<(16 + n)])) } catch {
            throw bad("header: \(error)")
        }
        guard h.format == 1 else { throw bad("format \(h.format), expected 1") }
        if let expected, !h.sameKey(expected) {
            throw bad("made for other settings (base, tokens, window, protocol, kind or k)")
        }
        guard let kind = Kind(rawValue: h.kind) else { throw bad("kind '\(h.kind)', expected hidden or topk") }
        let topK = kind == .topk
        guard h.vocab >= 1, h.positions >= 0, h.positions < 1 << 40,
            topK
                ? (h.k >= 1 && h.k <= h.vocab && h.k < 1 << 20 && h.hidden == 0)
                : (h.k == 0 && h.hidden >= 1 && h.hidden < 1 << 20) else {
            throw bad("kind \(h.kind), k \(h.k), hidden \(h.hidden), vocab \(h.vocab), positions \(h.positions)")
        }
        let offset = (16 + n + 63) / 64 * 64
        let P = h.positions, k = h.k, C = h.hidden
        let expectedBytes = offset + P * Self.bytesPerPosition(h)
        guard b.count == expectedBytes else {
            throw bad(
                "\(b.count) bytes, expected \(expectedBytes) for \(P) positions of "
                    + "\(topK ? "top-\(k)" : "hidden size \(C)") (truncated?)")
        }
        header = h
        let base = b.baseAddress! + offset
        if topK {
            ids = base.assumingMemoryBound(to: Int32.self)
            logProbs = (base + 4 * P * k).assumingMemoryBound(to: Float.self)
            logRest = (base + 8 * P * k).assumingMemoryBound(to: Float.self)
            targetLogProbs = (base + 8 * P * k + 4 * P).assumingMemoryBound(to: Float.self)
            hiddenStates = UnsafePointer(bitPattern: 8)!  // unused
        } else {
            hiddenStates = base.assumingMemoryBound(to: Float.self)
            targetLogProbs = (base + 4 * P * C).assumingMemoryBound(to: Float.self)
            ids = UnsafePointer(bitPattern: 8)!; logProbs = UnsafePointer(bitPattern: 8)!
            logRest = UnsafePointer(bitPattern: 8)!
        }
        for t in 0..<P {
            guard targetLogProbs[t].isFinite, targetLogProbs[t] <= 1e-5 else {
                throw bad(
                    "position \(t): the correct token's log-probability \(targetLogProbs[t]) is not a finite "
                        + "log-probability")
            }
            guard topK else { continue }
            for i in 0..<k {
                let id = ids[t * k + i], lp = logProbs[t * k + i]
                guard id >= 0, Int(id) < h.vocab else {
                    throw bad("position \(t): id \(id) outside the vocabulary (0..<\(h.vocab))")
                }
                guard lp.isFinite, lp <= 1e-5, i == 0 || lp <= logProbs[t * k + i - 1] else {
                    throw bad(
                        "position \(t): log-probability \(lp) at rank \(i) is not finite, positive or out of order")
                }
            }
            guard logRest[t].isFinite, logRest[t] <= 1e-5 else {
                throw bad("position \(t): rest mass \(logRest[t]) not a finite log-probability")
            }
        }
        if !topK, let bad1 = (0..<(P * C)).first(where: { !hiddenStates[$0].isFinite }) {
            throw bad("hidden state \(bad1 / C) holds a non-finite value")
        }
    }

    /// The reference of `header` from the cache directory, or built and stored there (returns whether it was cached).
    /// A cached file that fails its checks is rebuilt (`warning` says why).
    public static func cached(
        directory: String, header h: Header, base: DecoderModel, tokens: [Int32],
        warning: (String) -> Void = { _ in }, progress: ((Int, Int) -> Void)? = nil
    ) throws -> (BaseReference, Bool) {
        let path = (directory as NSString).appendingPathComponent(fileName(h))
        if FileManager.default.fileExists(atPath: path) {
            do { return (try BaseReference(path: path, expected: h), true) } catch let e as EvaluationError {
                warning("\(e.description); rebuilding it")
            }
        }
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw EvaluationError("cannot create the cache directory (\(error.localizedDescription))",
                ErrorContext(file: directory))
        }
        try build(base: base, tokens: tokens, header: h, to: path, progress: progress)
        return (try BaseReference(path: path, expected: h), false)
    }
}

extension JSONEncoder {
    /// Sorted keys: the same value always encodes to the same bytes.
    static var sorted: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }
}
