//! Log lines in glog's layout (`I1122 19:07:12.345678 12345 solver.rs:123] message`), so tools
//! written for Caffe's logs read crema's.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

struct GlogFormat;

/// (month, day, hour, minute, second, micros) of a UNIX time, UTC.
fn civil(t: std::time::SystemTime) -> (u32, u32, u32, u32, u32, u32) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        month,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros(),
    )
}

impl<S, N> FormatEvent<S, N> for GlogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let sev = match *meta.level() {
            Level::ERROR => 'E',
            Level::WARN => 'W',
            _ => 'I',
        };
        let (mo, d, h, mi, s, us) = civil(std::time::SystemTime::now());
        let file = meta
            .file()
            .map(|f| f.rsplit('/').next().unwrap_or(f))
            .unwrap_or("crema");
        write!(
            w,
            "{sev}{mo:02}{d:02} {h:02}:{mi:02}:{s:02}.{us:06} {:>5} {file}:{}] ",
            std::process::id(),
            meta.line().unwrap_or(0)
        )?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Installs the logger on stderr; `CREMA_LOG` (e.g. `warn`) filters it, else `default_filter`.
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CREMA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(GlogFormat)
        .try_init();
}

/// Keeps this thread's log to warnings and errors while the guard lives: the data-parallel
/// workers other than rank 0 build and train the same net, and Caffe logs only its root solver.
#[cfg(feature = "nccl")]
pub fn quiet_thread() -> tracing::subscriber::DefaultGuard {
    let filter = tracing_subscriber::EnvFilter::new("warn");
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(GlogFormat)
        .finish();
    tracing::subscriber::set_default(sub)
}
