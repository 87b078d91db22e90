//! Commands for the guest: an argv travels on the kernel command line as
//! `ember.cmd=<base64>`, where the base64 (standard alphabet, padded) holds each argument
//! followed by a NUL byte. The kernel command line cannot carry spaces, quotes or newlines
//! inside one argument; base64 carries any byte but NUL, which no argument can hold anyway.
//! The project's initramfs init (resources/initramfs/init) decodes it, runs the command and
//! reports its exit status through the exit port.

use base64::Engine;

/// The kernel command-line parameter that carries the command.
pub const PARAM: &str = "ember.cmd=";
/// The kernel command-line parameter that makes the init wait for its command on the console
/// after "ready": one line, `ember.cmd=<base64>` as on the command line, or empty for the shell.
pub const WAIT_PARAM: &str = "ember.wait";
/// On the line typed to a restored guest: bytes (hex) for its random pool.
pub const SEED_PARAM: &str = "ember.seed=";
/// On the line typed to a restored guest: the host's wall clock (`seconds.nanoseconds`).
pub const TIME_PARAM: &str = "ember.time=";
/// On the line typed to a restored guest: its clone id (hex), EMBER_CLONE_ID for the command.
pub const CLONE_PARAM: &str = "ember.clone=";

/// Errors in a command.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// No program was given.
    #[error("The guest command is empty")]
    Empty,
    /// An argument holds a NUL byte, which no argv can carry.
    #[error("Argument {0} of the guest command holds a NUL byte")]
    Nul(usize),
}

/// Encodes `argv` as the `ember.cmd=...` parameter.
pub fn encode(argv: &[String]) -> Result<String, CommandError> {
    if argv.is_empty() {
        return Err(CommandError::Empty);
    }
    let mut raw = Vec::new();
    for (i, a) in argv.iter().enumerate() {
        if a.as_bytes().contains(&0) {
            return Err(CommandError::Nul(i));
        }
        raw.extend_from_slice(a.as_bytes());
        raw.push(0);
    }
    Ok(format!(
        "{PARAM}{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

/// Decodes the value of an `ember.cmd=` parameter (without the prefix) back into an argv.
pub fn decode(value: &str) -> Option<Vec<String>> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value)
        .ok()?;
    let body = raw.strip_suffix(&[0])?;
    body.split(|&b| b == 0)
        .map(|a| String::from_utf8(a.to_vec()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_byte() {
        let argv: Vec<String> = [
            "sh",
            "-c",
            "echo \"$1\"; exit 3",
            "x",
            "a b",
            "it's",
            "two\nlines",
            "",
            "é",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = encode(&argv).expect("valid");
        assert!(p.starts_with(PARAM));
        let value = &p[PARAM.len()..];
        assert!(value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
        assert_eq!(decode(value), Some(argv));
    }

    #[test]
    fn matches_the_shell_encoding() {
        // printf '%s\0' echo hello | base64
        assert_eq!(
            encode(&["echo".into(), "hello".into()]).as_deref(),
            Ok("ember.cmd=ZWNobwBoZWxsbwA=")
        );
    }

    #[test]
    fn rejects_empty_and_nul() {
        assert_eq!(encode(&[]), Err(CommandError::Empty));
        assert_eq!(
            encode(&["a".into(), "b\0c".into()]),
            Err(CommandError::Nul(1))
        );
        assert_eq!(decode("!!"), None);
    }
}
