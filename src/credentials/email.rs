//! Email validation and normalisation as the seed did it (pydantic's `EmailStr`, which calls the
//! `email-validator` package with deliverability checks off), with the same error messages for
//! the mistakes people make. The result is the normalised address that gets stored: the domain
//! lower-cased (IDNA-decoded), the local part NFC-normalised and otherwise kept as typed.
//!
//! Uniqueness and lookup compare addresses case-insensitively; that is the storage layer's job.

use unicode_normalization::UnicodeNormalization;

const MAX_INPUT_CHARS: usize = 2048;
const EMAIL_MAX_LENGTH: usize = 254;
const DOMAIN_MAX_LENGTH: usize = 253;
const DNS_LABEL_LENGTH_LIMIT: usize = 63;
const SPECIAL_USE_DOMAIN_NAMES: &[&str] =
    &["arpa", "invalid", "local", "localhost", "onion", "test"];
const CASE_INSENSITIVE_MAILBOX_NAMES: &[&str] = &[
    "info",
    "marketing",
    "sales",
    "support",
    "abuse",
    "noc",
    "security",
    "postmaster",
    "hostmaster",
    "usenet",
    "news",
    "webmaster",
    "www",
    "uucp",
    "ftp",
];

/// Why an address is refused: the text that follows "value is not a valid email address: ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailError(pub String);

fn err<T>(reason: impl Into<String>) -> Result<T, EmailError> {
    Err(EmailError(reason.into()))
}

/// Validates `input` and returns the normalised address.
pub fn normalize(input: &str) -> Result<String, EmailError> {
    if input.chars().count() > MAX_INPUT_CHARS {
        return err(format!(
            "Length must not exceed {MAX_INPUT_CHARS} characters"
        ));
    }
    if input.contains(['\r', '\n']) {
        return err("Carriage return and line feed characters are not allowed");
    }
    let address = strip_display_name(input).trim();

    let Some((local, domain)) = split_at_unquoted_at(address) else {
        if address.contains('＠') {
            return err("The email address has the \"full-width\" at-sign (@) character instead of a regular at-sign.");
        }
        if address.contains('﹫') {
            return err("The email address has the \"small commercial at\" character instead of a regular at-sign.");
        }
        return err("An email address must have an @-sign.");
    };
    if local.contains('<') {
        return err(
            "A display name and angle brackets around the email address are not permitted here.",
        );
    }

    let local = validate_local_part(local)?;
    if domain.is_empty() {
        return err("There must be something after the @-sign.");
    }
    if domain.starts_with('[') && domain.ends_with(']') {
        return err("A bracketed IP address after the @-sign is not allowed here.");
    }
    let (domain, ascii_domain) = validate_domain(domain)?;

    let normalized = format!("{local}@{domain}");
    for candidate in [
        address.to_string(),
        normalized.clone(),
        format!("{local}@{ascii_domain}"),
    ] {
        let bytes = candidate.len();
        if bytes > EMAIL_MAX_LENGTH {
            let diff = bytes - EMAIL_MAX_LENGTH;
            return err(format!(
                "The email address is too long ({diff} character{} too many).",
                plural(diff)
            ));
        }
    }
    Ok(normalized)
}

/// The account a login names: the username normalised as registration normalised the stored
/// email (NFC, IDNA domain, display name dropped), so that every spelling registration treats
/// as the same address reaches the same account and the same rate-limit bucket. A username that
/// is not a valid address is looked up as typed (it matches no account the API created).
pub fn login_account(username: &str) -> std::borrow::Cow<'_, str> {
    match normalize(username) {
        Ok(address) => std::borrow::Cow::Owned(address),
        Err(_) => std::borrow::Cow::Borrowed(username),
    }
}

/// Which account an address names, for the login limits and the login lookup alike: the
/// address trimmed and lower-cased by Rust's (Unicode's) rules. PostgreSQL's `lower()`, which
/// the `users` table's unique index and lookup use, folds some letters differently (`İ` to
/// `i`, a final `Σ` to `σ`, and letters newer than its Unicode tables not at all), so a row it
/// finds is only the account when this key agrees; otherwise a spelling could reach an account
/// while being counted in a rate-limit bucket of its own.
pub fn account_key(address: &str) -> String {
    address.trim().to_lowercase()
}

/// pydantic accepts `Name <address>` and `"Name" <address>` and keeps the address.
fn strip_display_name(value: &str) -> &str {
    let trimmed = value.trim();
    let (Some(open), true) = (trimmed.find('<'), trimmed.ends_with('>')) else {
        return value;
    };
    let name = trimmed[..open].trim();
    let inner = &trimmed[open + 1..trimmed.len() - 1];
    if inner.is_empty() {
        return value;
    }
    let quoted = name.len() >= 2 && name.starts_with('"') && name.ends_with('"');
    let name_ok = name.is_empty()
        || quoted
        || name.split_whitespace().all(|word| {
            word.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || ".!#$%&'*+-/=?^`{|}~".contains(c))
        });
    if name_ok {
        inner
    } else {
        value
    }
}

/// Splits at the first `@` outside a quoted string.
fn split_at_unquoted_at(address: &str) -> Option<(&str, &str)> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in address.char_indices() {
        if in_quote {
            if c == '\\' && !escaped {
                escaped = true;
                continue;
            }
            if c == '"' && !escaped {
                in_quote = false;
            }
            escaped = false;
        } else if c == '"' {
            in_quote = true;
        } else if c == '@' {
            let domain = &address[i + 1..];
            // "a@@b" leaves "@b" as the domain, as email-validator does.
            return Some((&address[..i], domain));
        }
    }
    None
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_!#$%&'*+-/=?^`{|}~".contains(c)
}

fn is_atext_intl(c: char) -> bool {
    is_atext(c) || (c as u32) >= 0x80
}

/// How email-validator names a character in its messages.
fn display_char(c: char) -> String {
    match c {
        '\\' => "\"\\\"".to_string(),
        '\'' => "\"'\"".to_string(),
        ' ' => "SPACE".to_string(),
        '\u{a0}' => "NO-BREAK SPACE".to_string(),
        c if c.is_control() || c.is_whitespace() => format!("U+{:04X}", c as u32),
        c => format!("'{c}'"),
    }
}

fn bad_char_list(chars: impl Iterator<Item = char>) -> String {
    let mut shown: Vec<String> = chars.map(display_char).collect();
    shown.sort();
    shown.dedup();
    shown.join(", ")
}

/// Format (Cf) and private-use (Co) characters: invisible or meaningless in an address, and
/// the stuff of spoofing (U+202E turns text around). email-validator refuses Unicode category C.
fn is_format_or_private(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F
        | 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD)
}

fn unsafe_chars(s: &str, allow_space: bool) -> Result<(), EmailError> {
    let bad: Vec<char> = s
        .chars()
        .filter(|c| {
            c.is_control()
                || is_format_or_private(*c)
                || (c.is_whitespace() && !(allow_space && *c == ' '))
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        err(format!(
            "The email address contains unsafe characters: {}.",
            bad_char_list(bad.into_iter())
        ))
    }
}

fn check_dot_atom(label: &str, start: &str, end: &str, hostname: bool) -> Result<(), EmailError> {
    if label.ends_with('.') {
        return err(end.replace("{}", "period"));
    }
    if label.starts_with('.') {
        return err(start.replace("{}", "period"));
    }
    if label.contains("..") {
        return err("An email address cannot have two periods in a row.");
    }
    if hostname {
        if label.ends_with('-') {
            return err(end.replace("{}", "hyphen"));
        }
        if label.starts_with('-') {
            return err(start.replace("{}", "hyphen"));
        }
        if label.contains(".-") || label.contains("-.") {
            return err("An email address cannot have a period and a hyphen next to each other.");
        }
    }
    Ok(())
}

fn is_dot_atom(s: &str, atext: fn(char) -> bool) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|part| !part.is_empty() && part.chars().all(atext))
}

fn validate_local_part(local: &str) -> Result<String, EmailError> {
    if local.is_empty() {
        return err("There must be something before the @-sign.");
    }
    if local.starts_with('"') {
        return err("Quoting the part before the @-sign is not allowed here.");
    }
    let local: String = local.nfc().collect();
    if is_dot_atom(&local, is_atext) {
        return Ok(lowercase_role_mailbox(local));
    }
    if is_dot_atom(&local, is_atext_intl) {
        unsafe_chars(&local, false)?;
        return Ok(local);
    }
    let bad: Vec<char> = local
        .chars()
        .filter(|c| !(is_atext_intl(*c) || *c == '.'))
        .collect();
    if !bad.is_empty() {
        return err(format!(
            "The email address contains invalid characters before the @-sign: {}.",
            bad_char_list(bad.into_iter())
        ));
    }
    check_dot_atom(
        &local,
        "An email address cannot start with a {}.",
        "An email address cannot have a {} immediately before the @-sign.",
        false,
    )?;
    err("The email address contains invalid characters before the @-sign.")
}

fn lowercase_role_mailbox(local: String) -> String {
    let lower = local.to_ascii_lowercase();
    if CASE_INSENSITIVE_MAILBOX_NAMES.contains(&lower.as_str()) {
        lower
    } else {
        local
    }
}

fn is_hostname_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '.' || (c as u32) >= 0x80
}

fn is_hostname(s: &str) -> bool {
    s.split('.').all(|label| {
        !label.is_empty()
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

/// Returns (display domain, ASCII domain).
fn validate_domain(domain: &str) -> Result<(String, String), EmailError> {
    let chars = domain.chars().count();
    if chars > DOMAIN_MAX_LENGTH {
        let diff = chars - DOMAIN_MAX_LENGTH;
        return err(format!(
            "The email address is too long after the @-sign ({diff} character{} too many).",
            plural(diff)
        ));
    }
    let bad: Vec<char> = domain.chars().filter(|c| !is_hostname_char(*c)).collect();
    if !bad.is_empty() {
        return err(format!(
            "The part after the @-sign contains invalid characters: {}.",
            bad_char_list(bad.into_iter())
        ));
    }
    unsafe_chars(domain, false)?;
    let mapped: String = if domain.is_ascii() {
        domain.to_ascii_lowercase()
    } else {
        domain.nfc().collect::<String>().to_lowercase()
    };
    check_dot_atom(
        &mapped,
        "An email address cannot have a {} immediately after the @-sign.",
        "An email address cannot end with a {}.",
        true,
    )?;
    for label in mapped.split('.') {
        let b = label.as_bytes();
        if b.len() >= 4 && &b[2..4] == b"--" && !label.to_ascii_lowercase().starts_with("xn") {
            return err("An email address cannot have two letters followed by two dashes immediately after the @-sign or after a period, except Punycode.");
        }
    }
    let ascii = if is_hostname(&mapped) {
        mapped.clone()
    } else {
        let ascii = idna::domain_to_ascii(&mapped)
            .map_err(|e| EmailError(format!("The part after the @-sign is invalid ({e}).")))?;
        if !is_hostname(&ascii) {
            return err("The email address contains invalid characters after the @-sign after IDNA encoding.");
        }
        ascii
    };
    if ascii.len() > DOMAIN_MAX_LENGTH {
        let diff = ascii.len() - DOMAIN_MAX_LENGTH;
        return err(format!(
            "The email address is too long after the @-sign ({diff} byte{} too many after IDNA encoding).",
            plural(diff)
        ));
    }
    for label in ascii.split('.') {
        if label.len() > DNS_LABEL_LENGTH_LIMIT {
            let diff = label.len() - DNS_LABEL_LENGTH_LIMIT;
            return err(format!(
                "After the @-sign, periods cannot be separated by so many characters ({diff} character{} too many).",
                plural(diff)
            ));
        }
    }
    if !ascii.contains('.') {
        return err("The part after the @-sign is not valid. It should have a period.");
    }
    if !ascii.ends_with(|c: char| c.is_ascii_alphabetic()) {
        return err(
            "The part after the @-sign is not valid. It is not within a valid top-level domain.",
        );
    }
    for special in SPECIAL_USE_DOMAIN_NAMES {
        if ascii == *special || ascii.ends_with(&format!(".{special}")) {
            return err("The part after the @-sign is a special-use or reserved name that cannot be used with email.");
        }
    }
    let display = if ascii.contains("xn--") {
        let (unicode, result) = idna::domain_to_unicode(&ascii);
        if result.is_err() {
            return err("The part after the @-sign is not valid IDNA.");
        }
        unicode
    } else {
        ascii.clone()
    };
    Ok((display, ascii))
}

fn plural(n: usize) -> &'static str {
    if n > 1 {
        "s"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(input: &str) -> String {
        normalize(input).unwrap_err().0
    }

    #[test]
    fn normalises_like_pydantic() {
        assert_eq!(normalize("Seed@Example.COM").unwrap(), "Seed@example.com");
        assert_eq!(normalize(" pad@example.com ").unwrap(), "pad@example.com");
        assert_eq!(
            normalize("Name <named@example.com>").unwrap(),
            "named@example.com"
        );
        assert_eq!(normalize("ünï@exämple.com").unwrap(), "ünï@exämple.com");
        assert_eq!(normalize("a@123.com").unwrap(), "a@123.com");
        assert_eq!(normalize("a@example.c").unwrap(), "a@example.c");
        assert_eq!(
            normalize("Support@Example.com").unwrap(),
            "support@example.com"
        );
        assert_eq!(normalize("a@xn--exmple-cua.com").unwrap(), "a@exämple.com");
        assert!(normalize("\u{202e}@example.com").is_err());
        assert!(normalize("a\u{200b}b@example.com").is_err());
        assert!(normalize("a@exa\u{200b}mple.com").is_err());
    }

    /// Messages captured from the seed backend (shared/fixtures and a probe of the peer).
    #[test]
    fn messages_match_email_validator() {
        let cases = [
            ("not-an-email", "An email address must have an @-sign."),
            ("", "An email address must have an @-sign."),
            ("a@", "There must be something after the @-sign."),
            ("@b.com", "There must be something before the @-sign."),
            ("a@b", "The part after the @-sign is not valid. It should have a period."),
            ("a@localhost", "The part after the @-sign is not valid. It should have a period."),
            ("a b@b.com", "The email address contains invalid characters before the @-sign: SPACE."),
            ("a..b@example.com", "An email address cannot have two periods in a row."),
            (".a@example.com", "An email address cannot start with a period."),
            ("a.@example.com", "An email address cannot have a period immediately before the @-sign."),
            ("a@example..com", "An email address cannot have two periods in a row."),
            ("a@-example.com", "An email address cannot have a hyphen immediately after the @-sign."),
            ("a@@example.com", "The part after the @-sign contains invalid characters: '@'."),
            ("\"quoted\"@example.com", "Quoting the part before the @-sign is not allowed here."),
            ("a@example.com.", "An email address cannot end with a period."),
            ("a@ex_ample.com", "The part after the @-sign contains invalid characters: '_'."),
            ("a@[1.2.3.4]", "A bracketed IP address after the @-sign is not allowed here."),
            ("a@example.invalid", "The part after the @-sign is a special-use or reserved name that cannot be used with email."),
            ("a(comment)@example.com", "The email address contains invalid characters before the @-sign: '(', ')'."),
            ("a\u{0}@b.com", "The email address contains invalid characters before the @-sign: U+0000."),
            ("dup", "An email address must have an @-sign."),
            ("a\n@b.com", "Carriage return and line feed characters are not allowed"),
        ];
        for (input, expected) in cases {
            assert_eq!(reason(input), expected, "{input:?}");
        }
    }

    #[test]
    fn lengths_are_bounded() {
        let long_local = format!("{}@example.com", "a".repeat(250));
        assert!(reason(&long_local).starts_with("The email address is too long"));
        assert!(reason(&"a".repeat(3000)).starts_with("Length must not exceed 2048"));
        let long_label = format!("a@{}.com", "b".repeat(64));
        assert!(reason(&long_label).starts_with("After the @-sign, periods cannot be separated"));
    }
}
