use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::{BodyExt, Full};

/// Collects a request's body into memory so the request can be cloned and replayed.
///
/// Put a size limit in front of this (`http_body_util::Limited`): it reads the whole body.
///
/// # Errors
///
/// The body's error, if reading it fails.
///
/// # Cancel safety
///
/// Not cancel safe: dropping the future drops the request and whatever of its body was read.
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use brigade_retry::tower::buffer_request;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let request = http::Request::post("/v1/chat").body(Full::new(Bytes::from_static(b"{}"))).unwrap();
/// let replayable = buffer_request(request).await.unwrap();
/// let again = replayable.clone();
/// assert_eq!(again.into_body().collect().await.unwrap().to_bytes(), "{}");
/// # }
/// ```
pub async fn buffer_request<B: Body>(
    request: Request<B>,
) -> Result<Request<Full<Bytes>>, B::Error> {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Request::from_parts(parts, Full::new(bytes)))
}
