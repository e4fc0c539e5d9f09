//! A JSON parser that fails the way Python's `json.loads` fails, because FastAPI puts that
//! failure in its 422 answer: `{"loc": ["body", <character offset>], "ctx": {"error": <message>}}`.
//! The seed's clients see those exact offsets and messages, so we reproduce them.
//!
//! Differences from Python, all on the side of refusing: `NaN`/`Infinity` (which crash the seed)
//! are "Expecting value", nesting deeper than [`MAX_DEPTH`] is refused, and lone surrogates
//! become U+FFFD. Object keys keep their first position and their last value, as in a dict.

use serde_json::{Map, Number, Value};

/// Deeper documents are refused (Python would recurse ~1000 levels, then crash the seed).
pub const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// The bytes are not UTF-8: FastAPI answers 400 "There was an error parsing the body".
    NotUtf8,
    /// A syntax error at a character offset, with Python's message.
    Syntax { pos: usize, msg: &'static str },
}

pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|_| JsonError::NotUtf8)?;
    let chars: Vec<char> = text.chars().collect();
    let mut p = Parser {
        s: &chars,
        depth: 0,
    };
    let start = p.skip_ws(0);
    let (value, end) = p.value(start)?;
    let end = p.skip_ws(end);
    if end != chars.len() {
        return Err(syntax(end, "Extra data"));
    }
    Ok(value)
}

fn syntax(pos: usize, msg: &'static str) -> JsonError {
    JsonError::Syntax { pos, msg }
}

/// A value and the offset just after it.
type Parsed = Result<(Value, usize), JsonError>;

struct Parser<'a> {
    s: &'a [char],
    depth: usize,
}

impl Parser<'_> {
    fn at(&self, i: usize) -> Option<char> {
        self.s.get(i).copied()
    }

    fn skip_ws(&self, mut i: usize) -> usize {
        while matches!(self.at(i), Some(' ' | '\t' | '\n' | '\r')) {
            i += 1;
        }
        i
    }

    fn starts_with(&self, i: usize, word: &str) -> bool {
        word.chars()
            .enumerate()
            .all(|(k, c)| self.at(i + k) == Some(c))
    }

    /// Python's `scan_once`: a value starting exactly at `i`.
    fn value(&mut self, i: usize) -> Result<(Value, usize), JsonError> {
        match self.at(i) {
            Some('"') => {
                let (s, end) = self.string(i + 1)?;
                Ok((Value::String(s), end))
            }
            Some('{') => self.nested(i, Self::object),
            Some('[') => self.nested(i, Self::array),
            Some('n') if self.starts_with(i, "null") => Ok((Value::Null, i + 4)),
            Some('t') if self.starts_with(i, "true") => Ok((Value::Bool(true), i + 4)),
            Some('f') if self.starts_with(i, "false") => Ok((Value::Bool(false), i + 5)),
            Some('-' | '0'..='9') => self.number(i),
            _ => Err(syntax(i, "Expecting value")),
        }
    }

    fn nested(&mut self, i: usize, parse: fn(&mut Self, usize) -> Parsed) -> Parsed {
        if self.depth >= MAX_DEPTH {
            return Err(syntax(i, "Maximum nesting depth exceeded"));
        }
        self.depth += 1;
        let result = parse(self, i + 1);
        self.depth -= 1;
        result
    }

    /// `-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?`, matched greedily like Python's regex.
    fn number(&self, i: usize) -> Result<(Value, usize), JsonError> {
        let mut j = i;
        if self.at(j) == Some('-') {
            j += 1;
        }
        match self.at(j) {
            Some('0') => j += 1,
            Some('1'..='9') => {
                while matches!(self.at(j), Some('0'..='9')) {
                    j += 1;
                }
            }
            _ => return Err(syntax(i, "Expecting value")),
        }
        let int_end = j;
        if self.at(j) == Some('.') && matches!(self.at(j + 1), Some('0'..='9')) {
            j += 1;
            while matches!(self.at(j), Some('0'..='9')) {
                j += 1;
            }
        }
        if matches!(self.at(j), Some('e' | 'E')) {
            let mut k = j + 1;
            if matches!(self.at(k), Some('+' | '-')) {
                k += 1;
            }
            if matches!(self.at(k), Some('0'..='9')) {
                while matches!(self.at(k), Some('0'..='9')) {
                    k += 1;
                }
                j = k;
            }
        }
        let text: String = self.s[i..j].iter().collect();
        let number = if j == int_end {
            text.parse::<i64>()
                .map(Number::from)
                .ok()
                .or_else(|| text.parse::<u64>().map(Number::from).ok())
                .or_else(|| text.parse::<f64>().ok().and_then(Number::from_f64))
        } else {
            text.parse::<f64>().ok().and_then(Number::from_f64)
        };
        // Out-of-range floats (1e999) are infinities in Python; we refuse them.
        number
            .map(|n| (Value::Number(n), j))
            .ok_or_else(|| syntax(i, "Expecting value"))
    }

    /// Python's `scanstring`, `begin` being just after the opening quote.
    fn string(&self, begin: usize) -> Result<(String, usize), JsonError> {
        let mut out = String::new();
        let mut i = begin;
        loop {
            let Some(c) = self.at(i) else {
                return Err(syntax(begin - 1, "Unterminated string starting at"));
            };
            match c {
                '"' => return Ok((out, i + 1)),
                '\\' => {
                    let Some(esc) = self.at(i + 1) else {
                        return Err(syntax(begin - 1, "Unterminated string starting at"));
                    };
                    if esc == 'u' {
                        let (code, next) = self.unicode_escape(i + 1)?;
                        out.push(code);
                        i = next;
                        continue;
                    }
                    out.push(match esc {
                        '"' => '"',
                        '\\' => '\\',
                        '/' => '/',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        _ => return Err(syntax(i, "Invalid \\escape")),
                    });
                    i += 2;
                }
                c if (c as u32) < 0x20 => return Err(syntax(i, "Invalid control character at")),
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
    }

    fn hex4(&self, u_pos: usize) -> Result<u32, JsonError> {
        let digits = self
            .s
            .get(u_pos + 1..u_pos + 5)
            .filter(|_| u_pos + 5 < self.s.len())
            .ok_or_else(|| syntax(u_pos, "Invalid \\uXXXX escape"))?;
        digits.iter().try_fold(0u32, |acc, c| {
            c.to_digit(16)
                .map(|d| acc * 16 + d)
                .ok_or_else(|| syntax(u_pos, "Invalid \\uXXXX escape"))
        })
    }

    /// `\uXXXX`, with `u_pos` at the `u`; joins surrogate pairs as Python does.
    fn unicode_escape(&self, u_pos: usize) -> Result<(char, usize), JsonError> {
        let first = self.hex4(u_pos)?;
        let after = u_pos + 5;
        if (0xD800..0xDC00).contains(&first)
            && self.at(after) == Some('\\')
            && self.at(after + 1) == Some('u')
        {
            let second = self.hex4(after + 1)?;
            if (0xDC00..0xE000).contains(&second) {
                let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                return Ok((char::from_u32(code).unwrap_or('\u{FFFD}'), after + 6));
            }
        }
        Ok((char::from_u32(first).unwrap_or('\u{FFFD}'), after))
    }

    fn object(&mut self, start: usize) -> Result<(Value, usize), JsonError> {
        let mut map = Map::new();
        let mut i = self.skip_ws(start);
        if self.at(i) == Some('}') {
            return Ok((Value::Object(map), i + 1));
        }
        loop {
            if self.at(i) != Some('"') {
                return Err(syntax(
                    i,
                    "Expecting property name enclosed in double quotes",
                ));
            }
            let (key, end) = self.string(i + 1)?;
            i = self.skip_ws(end);
            if self.at(i) != Some(':') {
                return Err(syntax(i, "Expecting ':' delimiter"));
            }
            i = self.skip_ws(i + 1);
            let (value, end) = self.value(i)?;
            map.insert(key, value);
            i = self.skip_ws(end);
            match self.at(i) {
                Some('}') => return Ok((Value::Object(map), i + 1)),
                Some(',') => i = self.skip_ws(i + 1),
                _ => return Err(syntax(i, "Expecting ',' delimiter")),
            }
        }
    }

    fn array(&mut self, start: usize) -> Result<(Value, usize), JsonError> {
        let mut items = Vec::new();
        let mut i = self.skip_ws(start);
        if self.at(i) == Some(']') {
            return Ok((Value::Array(items), i + 1));
        }
        loop {
            let (value, end) = self.value(i)?;
            items.push(value);
            i = self.skip_ws(end);
            match self.at(i) {
                Some(']') => return Ok((Value::Array(items), i + 1)),
                Some(',') => i = self.skip_ws(i + 1),
                _ => return Err(syntax(i, "Expecting ',' delimiter")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> (usize, &'static str) {
        match parse(text.as_bytes()) {
            Err(JsonError::Syntax { pos, msg }) => (pos, msg),
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    /// Offsets and messages captured from the seed backend (CPython 3.11 `json`).
    #[test]
    fn errors_match_python() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "{not json",
                1,
                "Expecting property name enclosed in double quotes",
            ),
            (
                "{\"email\":\"a@b.com\",",
                19,
                "Expecting property name enclosed in double quotes",
            ),
            ("{\"email\" \"a\"}", 9, "Expecting ':' delimiter"),
            (
                "{\"email\":\"a\",}",
                13,
                "Expecting property name enclosed in double quotes",
            ),
            ("{\"email\":\"a\"} x", 14, "Extra data"),
            ("nul", 0, "Expecting value"),
            (
                "{\"email\":\"a@b.com\",\"password\":\"x\"",
                33,
                "Expecting ',' delimiter",
            ),
            (
                "{\"email\":\"a@b.com\\u\",\"password\":\"x\"}",
                18,
                "Invalid \\uXXXX escape",
            ),
            (
                "{\"email\":\"a@b.com\n\",\"password\":\"x\"}",
                17,
                "Invalid control character at",
            ),
            ("  ", 2, "Expecting value"),
            ("{\"a\":01}", 6, "Expecting ',' delimiter"),
            ("{\"a\":-}", 5, "Expecting value"),
            ("{\"a\":tru}", 5, "Expecting value"),
            ("{\"a\":\"\\x\"}", 6, "Invalid \\escape"),
            ("{\"a\":\"abc", 5, "Unterminated string starting at"),
            ("{\"a\" : [1,]}", 10, "Expecting value"),
            ("{\"a\" : [1 2]}", 10, "Expecting ',' delimiter"),
            ("{\"é\":\"ü\", \"b\" x}", 14, "Expecting ':' delimiter"),
        ];
        for (text, pos, msg) in cases {
            assert_eq!(error(text), (*pos, *msg), "{text:?}");
        }
    }

    #[test]
    fn values_parse_like_python() {
        let v = parse(br#"{"b":1,"a":"x\u00e9\ud83d\ude00","b":[true,null,-1.5e3]}"#).unwrap();
        assert_eq!(v.to_string(), r#"{"b":[true,null,-1500.0],"a":"xé😀"}"#);
        assert_eq!(parse(b"\xEF\xBB\xBF{}").unwrap(), Value::Object(Map::new()));
        assert_eq!(parse(b"{\"a\":\"\xff\"}"), Err(JsonError::NotUtf8));
        assert!(parse(b"NaN").is_err());
        assert!(parse(b"1e999").is_err());
    }

    #[test]
    fn nesting_is_bounded_without_recursion_trouble() {
        let deep = "[".repeat(100_000);
        assert_eq!(error(&deep), (MAX_DEPTH, "Maximum nesting depth exceeded"));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(ok.as_bytes()).is_ok());
    }
}
