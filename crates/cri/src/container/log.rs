//! Container output as the kubelet reads it: CRI's log format, one record a line,
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <text>`, a line longer than the configured
//! maximum split into partial (`P`) records, as containerd's CRI writes it.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

/// Time as Go's RFC3339Nano writes it in UTC: trailing zeros of the fraction dropped.
pub fn rfc3339_nano(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let nanos = since.subsec_nanos();
    if nanos > 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// Year, month and day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Where records go: one log file shared by a container's streams.
pub type LogSink = Arc<Mutex<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>>;

async fn record(sink: &LogSink, stream: &str, full: bool, text: &[u8]) -> std::io::Result<()> {
    let mut line = rfc3339_nano(SystemTime::now()).into_bytes();
    line.push(b' ');
    line.extend_from_slice(stream.as_bytes());
    line.extend_from_slice(if full { b" F " } else { b" P " });
    line.extend_from_slice(text);
    line.push(b'\n');
    sink.lock().await.write_all(&line).await
}

/// Copies `reader` (a container's stdout or stderr) into `sink` until it ends. `max_line`
/// bounds a record's text (None: no bound). A last line without its newline is partial.
pub async fn copy_stream<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: &'static str,
    sink: LogSink,
    max_line: Option<usize>,
) -> std::io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        loop {
            if let Some(end) = pending.iter().position(|&b| b == b'\n') {
                if max_line.is_none_or(|max| end <= max) {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    record(&sink, stream, true, &line[..line.len() - 1]).await?;
                    continue;
                }
            }
            match max_line {
                Some(max) if pending.len() > max => {
                    let chunk: Vec<u8> = pending.drain(..max).collect();
                    record(&sink, stream, false, &chunk).await?;
                }
                _ => break,
            }
        }
    }
    if !pending.is_empty() {
        record(&sink, stream, false, &pending).await?;
    }
    sink.lock().await.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_read_as_gos_rfc3339nano() {
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_765_155_315, 123_450_000);
        assert_eq!(rfc3339_nano(at), "2025-12-08T00:55:15.12345Z");
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_nano(whole), "2000-02-29T00:00:00Z");
    }

    async fn logged(input: &[u8], max: Option<usize>) -> Vec<String> {
        let file = Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
        impl tokio::io::AsyncWrite for Shared {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.0.lock().unwrap().extend_from_slice(buf);
                std::task::Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let sink: LogSink = Arc::new(Mutex::new(Box::new(Shared(file.clone()))));
        copy_stream(input, "stdout", sink, max).await.unwrap();
        let text = String::from_utf8(file.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| l.split_once(' ').unwrap().1.to_owned())
            .collect()
    }

    #[tokio::test]
    async fn lines_become_records_and_long_ones_are_split() {
        assert_eq!(
            logged(b"hello\nworld\n", None).await,
            ["stdout F hello", "stdout F world"]
        );
        assert_eq!(
            logged(b"abcdefghij\nxy\ntail", Some(4)).await,
            [
                "stdout P abcd",
                "stdout P efgh",
                "stdout F ij",
                "stdout F xy",
                "stdout P tail"
            ]
        );
        assert_eq!(logged(b"\n", None).await, ["stdout F "]);
    }
}
