//! `type = "console"`: one line per change on standard output (what `lily
//! demo` and `lily run --console` show).

mod config;
mod sink;

pub use config::ConsoleConfig;
pub use sink::ConsoleSink;
