//! Short names parsed once where they come in (a kind's, an account's): 1–32 characters of
//! `a-z`, `0-9`, `_` or `-`, so that they are safe as URL segments, metric labels, log
//! fields and JSON paths as they are.

/// Whether `s` is a short name.
pub(crate) fn is_short_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// What a short-name newtype over `String` offers: parsing (refused with `$bad`), its text,
/// and the conversions serde, maps keyed by text and formatting use.
macro_rules! short_name {
    ($name:ident, $bad:ident) => {
        impl $name {
            /// Parses a name from outside.
            pub fn parse(s: &str) -> Result<Self, $bad> {
                if $crate::name::is_short_name(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err($bad)
                }
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $bad;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }
    };
}

pub(crate) use short_name;
