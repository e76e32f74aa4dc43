//! A small in-process HTTP server that answers GETs of one object and
//! breaks, stalls or changes the body on purpose (s3s-fs cannot be made
//! to), for the resume tests of the S3 and the presigned stores. It answers
//! every request, whatever its path or signature.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the fake answers a GET of the object, request by request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Answer {
    /// Send this many bytes of what was asked, then close.
    BreakAfter(usize),
    /// Send this many bytes, then hold the connection open silently.
    StallAfter(usize),
    /// Send everything asked for, under ETag `e2` (a changed object).
    Changed,
    Full,
}

#[derive(Debug)]
pub(crate) struct Fake {
    pub(crate) endpoint: String,
    /// The Range header of each GET of the object (None: no Range).
    pub(crate) ranges: Arc<Mutex<Vec<Option<String>>>>,
}

const LIST_OK: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>bkt</Name><Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>";

pub(crate) async fn fake(body: Vec<u8>, answers: Vec<Answer>) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let (body, answers, seen) = (
        Arc::new(body),
        Arc::new(Mutex::new(answers.into_iter())),
        ranges.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (body, answers, seen) = (body.clone(), answers.clone(), seen.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                if target.contains("list-type=2") {
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{LIST_OK}",
                        LIST_OK.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                    return;
                }
                let range = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("range").then(|| v.trim().to_owned())
                });
                seen.lock().unwrap().push(range.clone());
                let start: usize = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.strip_suffix('-'))
                    .map_or(0, |n| n.parse().unwrap());
                let answer = answers.lock().unwrap().next().unwrap_or(Answer::Full);
                let etag = if matches!(answer, Answer::Changed) {
                    "\"e2\""
                } else {
                    "\"e1\""
                };
                let total = body.len();
                let status = if range.is_some() {
                    format!(
                        "206 Partial Content\r\nContent-Range: bytes {start}-{}/{total}",
                        total - 1
                    )
                } else {
                    "200 OK".to_owned()
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
                    total - start
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let rest = &body[start..];
                match answer {
                    Answer::BreakAfter(n) => {
                        let _ = s.write_all(&rest[..n.min(rest.len())]).await;
                    }
                    Answer::StallAfter(n) => {
                        let _ = s.write_all(&rest[..n.min(rest.len())]).await;
                        let _ = s.flush().await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Answer::Changed | Answer::Full => {
                        let _ = s.write_all(rest).await;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Fake { endpoint, ranges }
}
