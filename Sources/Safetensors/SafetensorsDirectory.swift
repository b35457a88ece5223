import Foundation
import SafeFiles
import Diagnostics
import JSONKeys

/// A Hugging Face model directory: `config.json` plus `model.safetensors` or shards listed in
/// `model.safetensors.index.json`.
public final class SafetensorsDirectory {
    /// Directory path.
    public let path: String
    /// Parsed `config.json` (empty if the file is absent).
    public let config: [String: Any]
    /// The opened safetensors files.
    public let files: [SafetensorsFile]
    /// All tensor names, sorted.
    public let tensorNames: [String]

    private let location: [String: SafetensorsFile]

    static let singleFile = "model.safetensors"
    static let indexFile = "model.safetensors.index.json"

    /// Opens the directory, its config and every shard, checking that indexed tensors exist in their shards.
    public init(path: String) throws {
        self.path = path
        let fm = FileManager.default
        let url = URL(fileURLWithPath: path, isDirectory: true)
        let configURL = url.appendingPathComponent("config.json")
        config = fm.fileExists(atPath: configURL.path) ? try Self.jsonObject(configURL) : [:]

        let indexURL = url.appendingPathComponent(Self.indexFile)
        var location: [String: SafetensorsFile] = [:]
        if fm.fileExists(atPath: indexURL.path) {
            guard let weightMap = try Self.jsonObject(indexURL)["weight_map"] as? [String: String] else {
                throw SafetensorsError(
                    indexURL.path, "expected 'weight_map' to be an object of tensor name -> shard file")
            }
            var shards: [String: SafetensorsFile] = [:]
            for (tensor, shard) in weightMap.sorted(by: { $0.key < $1.key }) {
                guard !shard.isEmpty, !shard.contains("/"), shard != "..", shard != "." else {
                    throw SafetensorsError(
                        indexURL.path, "tensor '\(tensor)': shard '\(shard)' is not a plain file name")
                }
                let file = try shards[shard] ?? SafetensorsFile(path: url.appendingPathComponent(shard).path)
                shards[shard] = file
                guard file.tensors[tensor] != nil else {
                    throw SafetensorsError(
                        file.path, "tensor '\(tensor)' is listed in \(Self.indexFile) but missing from this shard")
                }
                location[tensor] = file
            }
            files = shards.keys.sorted().compactMap { shards[$0] }
        } else {
            let single = url.appendingPathComponent(Self.singleFile).path
            guard fm.fileExists(atPath: single) else {
                throw SafetensorsError(path, "expected \(Self.singleFile) or \(Self.indexFile) in the directory")
            }
            let file = try SafetensorsFile(path: single)
            for name in file.tensors.keys { location[name] = file }
            files = [file]
        }
        self.location = location
        tensorNames = location.keys.sorted()
    }

    /// Dtype, shape and offsets of `name`.
    public func info(_ name: String) throws -> SafetensorsTensorInfo {
        try file(for: name).info(name)
    }

    /// The tensor's values as `Float`s in row-major order.
    public func floats(_ name: String) throws -> [Float] {
        try file(for: name).floats(name)
    }

    /// The tensor's stored bytes, whatever its dtype.
    public func rawBytes(_ name: String) throws -> [UInt8] {
        try file(for: name).rawBytes(name)
    }

    private func file(for name: String) throws -> SafetensorsFile {
        guard let file = location[name] else {
            throw SafetensorsError(path, "no tensor named '\(name)' in the directory", tensor: name)
        }
        return file
    }

    private static func jsonObject(_ url: URL) throws -> [String: Any] {
        let data: Data
        data = try SafeFiles.read(url.path, role: "safetensors index (JSON)", limit: 1 << 28)
        do { try JSONKeys.checkUnique(data) } catch {
            throw error.adding(ErrorContext(file: url.path), place: url.path)
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw SafetensorsError(url.path, "expected a JSON object")
        }
        return object
    }
}
