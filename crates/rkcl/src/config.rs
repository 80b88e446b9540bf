//! The one config style: a config struct whose fields document their
//! defaults, made only through a builder whose `build()` validates every
//! value up front.
//!
//! Config structs are `#[non_exhaustive]`: their fields can be read, but
//! outside the crate a config comes only from its builder (or `Default`,
//! which is valid), so no unvalidated config reaches a worker.

/// Declares `$builder`, the builder of `$config`: one setter per listed
/// field, and `build()`, which runs `$config::validate`.
macro_rules! config_builder {
    (
        $(#[$meta:meta])*
        $builder:ident => $config:ident { $($field:ident : $ty:ty),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug)]
        pub struct $builder {
            config: $config,
        }

        impl $builder {
            $(
                #[doc = concat!(
                    "Sets [`", stringify!($field), "`](", stringify!($config), "::",
                    stringify!($field), "); its default is named there."
                )]
                pub fn $field(mut self, value: $ty) -> Self {
                    self.config.$field = value;
                    self
                }
            )*

            /// The validated config.
            ///
            /// # Errors
            ///
            /// [`Error::Config`](crate::error::Error::Config) naming the first
            /// value out of range.
            pub fn build(self) -> crate::error::Result<$config> {
                self.config.validate()?;
                Ok(self.config)
            }
        }
    };
}

pub(crate) use config_builder;
