//! Log lines as the documentation prints them: an RFC 3339 UTC time, the
//! level in brackets, the message, then any fields
//! (`2026-01-15T10:30:45.123Z [INFO] Crash recovery initiated`).

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::env::{Clock, RealClock};

/// The event format.
pub struct Bracketed {
    clock: RealClock,
}

impl<S, N> FormatEvent<S, N> for Bracketed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let now = UNIX_EPOCH + Duration::from_micros(self.clock.wall_micros());
        write!(writer, "{} [{}] ", humantime::format_rfc3339_millis(now), event.metadata().level())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Sends the process's logs to standard error in this format, at INFO and
/// above.
pub fn init() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(Bracketed { clock: RealClock::new() })
        .init();
}
