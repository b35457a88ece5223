import Diagnostics
import Foundation
import SafeFiles

/// Reading token streams from files.
public enum TokenFile {
    /// Reads whitespace-separated non-negative integer ids; errors name the file and the bad entry.
    public static func read(_ path: String) throws -> [Int32] {
        let data: Data
        data = try SafeFiles.read(path, role: "token file (whitespace-separated ids)")
        var ids: [Int32] = []
        ids.reserveCapacity(data.count / 4)
        var value: Int64 = 0, inNumber = false, index = 0
        func fail(_ what: String) -> WorkbenchError {
            WorkbenchError("token \(index + 1): \(what) (expected whitespace-separated integer ids)",
                ErrorContext(file: path))
        }
        for byte in data {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                value = value * 10 + Int64(byte - UInt8(ascii: "0"))
                guard value <= Int64(Int32.max) else { throw fail("id too large") }
                inNumber = true
            case UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\t"), UInt8(ascii: "\r"):
                if inNumber { ids.append(Int32(value)); value = 0; inNumber = false; index += 1 }
            default:
                throw fail("unexpected character '\(String(decoding: [byte], as: UTF8.self))'")
            }
        }
        if inNumber { ids.append(Int32(value)) }
        guard !ids.isEmpty else {
            throw WorkbenchError("token file is empty (expected whitespace-separated integer ids)",
                ErrorContext(file: path))
        }
        return ids
    }
}

extension Workbench {
    /// Refuses a token stream too short for its use, naming the file it came from and how many tokens were
    /// needed and found, e.g. "data/train.txt: 27 tokens, fewer than the 65 one training window of 64 + 1 needs".
    /// `purpose` completes "the N ... needs" ("one training window of 64 + 1").
    public static func requireTokens(_ ids: [Int32], from file: String, needed: Int, for purpose: String) throws {
        guard ids.count < needed else { return }
        let count = "\(ids.count) token\(ids.count == 1 ? "" : "s")"
        throw WorkbenchError(
            "\(count), fewer than the \(needed) \(purpose) needs (use a longer text)",
            ErrorContext(file: file, expected: "at least \(needed) tokens", found: "\(ids.count) tokens"))
    }
}
