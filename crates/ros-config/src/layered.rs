//! Tables whose keys are declared once. A [`table!`] names each key with its field, its type and
//! its reader; from that one list come the struct, the list of allowed keys (for "unknown key"
//! errors and suggestions), the reader of the whole table and the layering of two sources (a key
//! set in the higher source wins; tables merge key by key; lists are replaced whole).

use std::collections::BTreeMap;

/// Layering: `higher` (a later source) over `self`.
pub trait Layer {
    fn layer(&mut self, higher: Self);
}

/// A value set in the higher source replaces the lower one.
impl<T> Layer for Option<T> {
    fn layer(&mut self, higher: Self) {
        if higher.is_some() {
            *self = higher;
        }
    }
}

/// Free-form tables (sysctls, interfaces, services, environment) merge entry by entry.
impl<K: Ord, V: Layer + Default> Layer for BTreeMap<K, V> {
    fn layer(&mut self, higher: Self) {
        for (k, v) in higher {
            self.entry(k).or_default().layer(v);
        }
    }
}

/// A value of a free-form table (a sysctl's, a variable's) is replaced.
impl Layer for String {
    fn layer(&mut self, higher: Self) {
        *self = higher;
    }
}

/// A key's reader, as a `table!` names it.
pub type Reader<T> = fn(&mut crate::walk::Walker<'_>, &str, &crate::node::Node) -> T;

/// Runs a key's reader (a plain function, so a closure written in a `table!` is typed).
pub fn read_with<T>(
    w: &mut crate::walk::Walker<'_>,
    path: &str,
    node: &crate::node::Node,
    reader: Reader<T>,
) -> T {
    reader(w, path, node)
}

/// Declares a layered table: `field: Type = "key" => reader,` for each key, where `reader` is a
/// `fn(&mut Walker, path, &Node) -> Type`; `planned` keys are recognised and reported as not
/// applied yet. Generates the struct (with `Default`), `KEYS`, `read` and [`Layer`].
#[macro_export]
macro_rules! table {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            planned: [$($planned:literal),*],
            $(
                $(#[$fmeta:meta])*
                $field:ident : $ty:ty = $key:literal => $reader:expr,
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// The keys of this table.
            pub const KEYS: &'static [&'static str] = &[$($key),*];
            /// Keys of the designed schema that this build does not apply yet.
            pub const PLANNED: &'static [&'static str] = &[$($planned),*];

            /// Reads the table at `path`; every problem is recorded in `w` and leaves its key
            /// unset.
            pub fn read(
                w: &mut $crate::walk::Walker<'_>,
                path: &str,
                node: &$crate::node::Node,
            ) -> Self {
                let mut out = Self::default();
                let allowed: Vec<&str> =
                    Self::KEYS.iter().chain(Self::PLANNED).copied().collect();
                for e in w.table(path, node, &allowed).unwrap_or_default() {
                    let p = $crate::walk::join(path, &e.key);
                    match e.key.as_str() {
                        $(
                            $key => {
                                out.$field = $crate::layered::read_with(w, &p, &e.node, $reader);
                            }
                        )*
                        _ => w.err(
                            e.key_pos,
                            &p,
                            format!("`{p}` is in the ros schema but this build does not apply it yet; ignored"),
                        ),
                    }
                }
                out
            }
        }

        impl $crate::layered::Layer for $name {
            fn layer(&mut self, higher: Self) {
                $( $crate::layered::Layer::layer(&mut self.$field, higher.$field); )*
            }
        }
    };
}
