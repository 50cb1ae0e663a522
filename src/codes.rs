//! Enums whose variants have a stable machine name: skip reasons, error kinds, projection
//! kinds and actions. The names are a contract (JSON report, metrics labels, logs), and each
//! enum lists its variants once: `ALL`, `as_str`, `description` (the variant's doc comment,
//! which the man page prints), `Display` and serde all come from that one list.

/// Defines such an enum. Every variant is `Name = "machine_name"` with a doc comment.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[doc = $doc:literal])+ $variant:ident = $code:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stable machine name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $code,)+
                }
            }

            /// The variant's doc comment, as one line.
            pub fn description(self) -> &'static str {
                match self {
                    $($name::$variant => concat!($($doc),+).trim_start(),)+
                }
            }

            /// The variant with this machine name.
            pub fn from_name(name: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                $name::from_name(&name).ok_or_else(|| {
                    let names: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    serde::de::Error::custom(format!(
                        "unknown {} {name:?}, expected one of {}",
                        stringify!($name),
                        names.join(", ")
                    ))
                })
            }
        }
    };
}

pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    named_enum! {
        /// A test enum.
        pub enum Sample {
            /// The first one.
            First = "first",
            /// The second one,
            /// over two lines.
            Second = "second_one",
        }
    }

    #[test]
    fn one_list_gives_names_docs_and_serde() {
        assert_eq!(Sample::ALL, &[Sample::First, Sample::Second]);
        assert_eq!(Sample::Second.as_str(), "second_one");
        assert_eq!(Sample::Second.to_string(), "second_one");
        assert_eq!(
            Sample::Second.description(),
            "The second one, over two lines."
        );
        assert_eq!(Sample::from_name("first"), Some(Sample::First));
        assert_eq!(serde_json::to_string(&Sample::First).unwrap(), "\"first\"");
        let back: Sample = serde_json::from_str("\"second_one\"").unwrap();
        assert_eq!(back, Sample::Second);
        let err = serde_json::from_str::<Sample>("\"third\"").unwrap_err();
        assert!(err.to_string().contains("first, second_one"), "{err}");
    }
}
