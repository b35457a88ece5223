import XCTest
@testable import Tokenizer

/// Pre-tokenizer splits. The hand-written expectations follow the regex semantics and were
/// cross-checked against Hugging Face's `pre_tokenize_str` (tokenizers 0.23.3); the fixture cases
/// are that function's output for each of the four pre-tokenizers (tools/make_tokenizer_fixture.py; its qwen2
/// pieces also agree with the Python `regex` module's, apart from one text of Unicode 17 scalars).
final class PreTokenizerTests: XCTestCase {
    private func pieces(_ text: String, _ kind: PreTokenizer) throws -> [String] {
        try Tiny.tokenizer(kind).preTokenize(text)
    }

    func testGPT2() throws {
        assertSameScalars(try pieces("Hello world 12345  \n\n  it's", .gpt2),
                          ["Hello", " world", " 12345", "  \n\n ", " it", "'s"])
        assertSameScalars(try pieces("I'M don't 'll ''x", .gpt2), ["I", "'", "M", " don", "'t", " '", "ll", " ''", "x"])
        assertSameScalars(try pieces("a  \tb", .gpt2), ["a", "  ", "\t", "b"])
        assertSameScalars(try pieces("x?'s", .gpt2), ["x", "?'", "s"])
        assertSameScalars(try pieces("end   ", .gpt2), ["end", "   "])
        assertSameScalars(try pieces("café 42€ 日本", .gpt2), ["café", " 42", "€", " 日本"])
        assertSameScalars(try pieces("\u{A0}\u{3000}x", .gpt2), ["\u{A0}", "\u{3000}", "x"])
    }

    func testSmolLMSplitsEveryNumberFirst() throws {
        assertSameScalars(try pieces("Hello world 12345  \n\n  it's", .smollm),
                          ["Hello", " world", " ", "1", "2", "3", "4", "5", "  \n\n ", " it", "'s"])
        // The whitespace before a digit is a segment of its own, so (?!\S) sees its end.
        assertSameScalars(try pieces("\n\n1990", .smollm), ["\n\n", "1", "9", "9", "0"])
        assertSameScalars(try pieces("  1", .smollm), ["  ", "1"])
        assertSameScalars(try pieces("x²½٣", .smollm), ["x", "²", "½", "٣"])
    }

    func testLlama3() throws {
        assertSameScalars(try pieces("(hello) I'M 1234567 ok", .llama3),
                          ["(hello", ")", " I", "'M", " ", "123", "456", "7", " ok"])
        assertSameScalars(try pieces("word\n\n  next", .llama3), ["word", "\n\n", " ", " next"])
        assertSameScalars(try pieces("!!!\r\n\r\nx", .llama3), ["!!!\r\n\r\n", "x"])
        assertSameScalars(try pieces("a\t\tb", .llama3), ["a", "\t", "\tb"])
        assertSameScalars(try pieces("x'ſ", .llama3), ["x", "'ſ"])
    }

    /// Qwen2 (Qwen2.5's tokenizer.json Split regex, llama.cpp's QWEN2 pre-type): Llama 3's pieces, except that
    /// every `\p{N}` scalar is a piece of its own. Expectations by hand from the regex, checked with tokenizers.
    func testQwen2() throws {
        // Digits one by one, where Llama 3 takes them in threes.
        assertSameScalars(try pieces("(hello) I'M 1234567 ok", .qwen2),
                          ["(hello", ")", " I", "'M", " ", "1", "2", "3", "4", "5", "6", "7", " ok"])
        assertSameScalars(try pieces("3.14159 $99.99", .qwen2),
                          ["3", ".", "1", "4", "1", "5", "9", " $", "9", "9", ".", "9", "9"])
        assertSameScalars(try pieces("\n\n1990", .qwen2), ["\n\n", "1", "9", "9", "0"])
        // Any \p{N}, of any script and width in UTF-8: superscripts, fractions, Arabic-Indic, mathematical digits.
        assertSameScalars(try pieces("x²½٣ 𝟙𝟚", .qwen2), ["x", "²", "½", "٣", " ", "𝟙", "𝟚"])
        // Contractions in any case; a quote after a space is punctuation.
        assertSameScalars(try pieces("Don'T WON'T it'S 'Ll", .qwen2), ["Don", "'T", " WON", "'T", " it", "'S", " '", "Ll"])
        assertSameScalars(try pieces("x'ſ", .qwen2), ["x", "'ſ"])
        // Newlines: punctuation keeps the line ends after it; whitespace runs end at their last newline.
        assertSameScalars(try pieces("word\n\n  next", .qwen2), ["word", "\n\n", " ", " next"])
        assertSameScalars(try pieces("!!!\r\n\r\nx", .qwen2), ["!!!\r\n\r\n", "x"])
        assertSameScalars(try pieces("...  ---\n\n+++ ?!", .qwen2), ["...", " ", " ---\n\n", "+++", " ?!"])
        assertSameScalars(try pieces("a\t\tb", .qwen2), ["a", "\t", "\tb"])
        assertSameScalars(try pieces("end  ", .qwen2), ["end", "  "])
        assertSameScalars(try pieces("café 日本語 Ελληνικά", .qwen2), ["café", " 日本語", " Ελληνικά"])
    }

    func testMatchesHuggingFaceOnFixtureTexts() throws {
        let fixture = try Fixture.load()
        XCTAssertGreaterThan(fixture.pretokenize.count, 40)
        for kind in [PreTokenizer.gpt2, .smollm, .llama3, .qwen2] {
            let tokenizer = try Tiny.tokenizer(kind)
            for item in fixture.pretokenize {
                assertSameScalars(tokenizer.preTokenize(item.text), item.pieces(kind), "\(kind): \(item.text.debugDescription)")
            }
        }
    }

    func testScalarClassesFollowHuggingFacesUnicodeVersion() {
        typealias C = CharacterClass
        XCTAssertEqual(C.classify(0x41), C.letter)
        XCTAssertEqual(C.classify(0x1F600), C.other)       // emoji
        XCTAssertEqual(C.classify(0xB2), C.number)         // superscript two
        XCTAssertEqual(C.classify(0x85), C.whitespace)     // NEL is \s
        XCTAssertEqual(C.classify(0x200B), C.other)        // zero width space is not \s
        XCTAssertEqual(C.classify(0x1C), C.other)          // information separators are not \s
        // Unicode 17 letters and digits are still unassigned for Oniguruma (Unicode 16).
        XCTAssertEqual(C.classify(0x88F), C.other)
        XCTAssertEqual(C.classify(0x1E6C0), C.other)
        XCTAssertEqual(C.classify(0x11DE0), C.other)
        // ...but the Digits step before SmolLM2's regex uses current tables (Rust's char::is_numeric).
        XCTAssertEqual(C.classify(0x11DE0, currentNumbers: true), C.number)
        XCTAssertEqual(C.classify(0x1E6C0, currentNumbers: true), C.other)
    }
}
