import Foundation
import Model
import XCTest

/// Every cross-field rule of a config.json: each inconsistent config is refused, naming the key, with what was
/// expected and what was found.
final class ConfigConsistencyTests: XCTestCase {
    let ok = #""vocab_size": 10, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 2, "num_attention_heads": 2"#

    func error(_ json: String) -> String {
        do { _ = try ModelConfig(json: JSONValue.parse(json)); return "no error" } catch { return "\(error)" }
    }

    /// `ok` with `key` set to the raw JSON `value` (replacing it when present).
    func with(_ key: String, _ value: String, family: String? = nil) -> String {
        var fields = ok.components(separatedBy: ", ").filter { !$0.hasPrefix("\"\(key)\":") }
        fields.append("\"\(key)\": \(value)")
        if let family { fields.append("\"model_type\": \"\(family)\"") }
        return "{" + fields.joined(separator: ", ") + "}"
    }

    func assertRefused(_ json: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        let e = error(json)
        XCTAssertTrue(e.contains(expected), "\(json) -> \(e)", file: file, line: line)
    }

    func testTheBaseConfigIsAccepted() {
        XCTAssertEqual(error("{\(ok)}"), "no error")
        XCTAssertEqual(error(with("head_dim", "6")), "no error", "an explicit head dim need not be hidden / heads")
    }

    /// The implied head dim (hidden / heads) must be exact: 64 / 128 would be 0 (0-width projections), 10 / 4
    /// would drop two channels.
    func testImpliedHeadDimMustBeExact() {
        assertRefused(with("hidden_size", "64").replacingOccurrences(of: "\"num_attention_heads\": 2", with: "\"num_attention_heads\": 128")
                        .replacingOccurrences(of: "\"vocab_size\": 10", with: "\"vocab_size\": 10, \"num_key_value_heads\": 128"),
                      "hidden_size 64 is not a multiple of num_attention_heads 128")
        assertRefused(with("hidden_size", "10").replacingOccurrences(of: "\"num_attention_heads\": 2", with: "\"num_attention_heads\": 4"),
                      "hidden_size 10 is not a multiple of num_attention_heads 4")
    }

    func testHeadDimBelowTwoOrOddIsRefused() {
        assertRefused(with("head_dim", "0"), "key 'head_dim' is 0 (expected an integer in 1...")
        assertRefused(with("head_dim", "1"), "head_dim must be even and at least 2")
        assertRefused(with("head_dim", "3"), "head_dim must be even and at least 2")
    }

    func testHeadsMustBeAMultipleOfKeyValueHeads() {
        assertRefused(with("num_key_value_heads", "3"), "num_attention_heads 2 is not a multiple of num_key_value_heads 3")
        assertRefused(with("block_configs", #"[{"num_attention_heads": 3}, {}]"#), "layer 0: num_attention_heads 3 is not a multiple")
    }

    /// (JSON holds no infinity or NaN: 1e999 is refused by the parser, GGUF's are by the GGUF reader.)
    func testNormEpsAndRotaryBaseMustBeFiniteAndPositive() {
        for eps in ["0", "-1e-5", "1e300", "0.5"] { assertRefused(with("rms_norm_eps", eps), "key 'rms_norm_eps' is") }
        for theta in ["0", "-10000", "1e300"] { assertRefused(with("rope_theta", theta), "key 'rope_theta' is") }
        assertRefused(with("rope_parameters", #"{"rope_type": "default", "rope_theta": 1e300}"#), "rope_parameters.rope_theta is")
        assertRefused(with("rope_theta", "1e300", family: "gemma3_text"), "rope_theta is")
        assertRefused(with("rope_local_base_freq", "-1", family: "gemma3_text"), "rope_local_base_freq is -1")
        assertRefused(with("query_pre_attn_scalar", "0", family: "gemma3_text"), "query_pre_attn_scalar is 0")
    }

    func testSizesMustBePositive() {
        assertRefused(with("intermediate_size", "0"), "key 'intermediate_size' is 0")
        assertRefused(with("block_configs", #"[{"intermediate_size": 0}, {}]"#), "block_configs[0]: key 'intermediate_size' is 0")
        assertRefused(with("num_hidden_layers", "0"), "key 'num_hidden_layers' is 0")
        assertRefused(with("vocab_size", "0"), "key 'vocab_size' is 0")
        assertRefused(with("eos_token_id", "10"), "key 'eos_token_id' is 10 (expected a token id in 0..<vocab_size 10)")
    }

    /// Gemma 3's sliding window is checked even when no layer slides (it is written back either way).
    func testSlidingWindowIsSane() {
        let full = #"["full_attention", "full_attention"]"#
        let gemma = with("layer_types", full, family: "gemma3_text").dropLast() + ", \"head_dim\": 4"
        XCTAssertEqual(error(gemma + ", \"sliding_window\": 4}"), "no error")
        assertRefused(gemma + ", \"sliding_window\": -5}", "sliding_window is -5 (expected an integer in 1...")
        assertRefused(gemma + ", \"sliding_window\": 0}", "sliding_window is 0")
        assertRefused(with("layer_types", #"["sliding_attention", "full_attention"]"#, family: "gemma3_text"),
                      "missing key 'sliding_window'")
    }

    func testFlagsMustBeBooleans() {
        assertRefused(with("tie_word_embeddings", "\"yes\""), "key 'tie_word_embeddings' must be true or false, found \"yes\"")
    }

    /// Token ids are integers in the vocabulary or null; a string or object was read as "no id" before, silently,
    /// and a list of EOS ids (Llama 3.1) was dropped. A list is kept whole and written back as read.
    func testTokenIDsAreIntegersOrAListOfThem() throws {
        assertRefused(with("bos_token_id", #""1""#), "key 'bos_token_id' is \"1\" (expected a token id in 0..<vocab_size 10)")
        assertRefused(with("eos_token_id", "{}"), "key 'eos_token_id' is {} (expected a token id")
        assertRefused(with("eos_token_id", "[1, 12]"), "key 'eos_token_id[1]' is 12")
        assertRefused(with("eos_token_id", "[1, null]"), "key 'eos_token_id[1]' is null")
        assertRefused(with("eos_token_id", "[]"), "key 'eos_token_id' is an empty list")
        let c = try ModelConfig(json: JSONValue.parse(with("eos_token_id", "[2, 7]")))
        XCTAssertEqual(c.eosTokenID, 2)
        XCTAssertEqual(c.eosTokenIDs, [2, 7])
        XCTAssertEqual(c.json.objectValue?["eos_token_id"], .array([.int(2), .int(7)]))
        XCTAssertEqual(try ModelConfig(json: c.json), c, "the list survives a round trip")
        XCTAssertEqual(try ModelConfig(json: JSONValue.parse(with("eos_token_id", "null"))).eosTokenID, nil)
    }
}
