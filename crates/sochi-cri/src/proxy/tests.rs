//! The proxy against an in-process fake upstream ImageService on a temp
//! unix socket: bytes forwarded as they are (unknown fields included),
//! metadata both ways, statuses unchanged, the observer told of pulls, and
//! `Unavailable` naming the socket when nothing listens.

use std::path::Path;

use parking_lot::Mutex;
use prost::encoding::{encode_key, encode_varint, WireType};
use tempfile::TempDir;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::metadata::MetadataMap;
use tonic::Code;

use super::*;
use crate::auth::Secret;
use crate::client::CriClient;
use crate::unix::connect;

// --- the fake upstream -------------------------------------------------------

/// How the fake answers a call to a path.
type Respond = Arc<dyn Fn(&str) -> Result<Bytes, Status> + Send + Sync>;

/// One call the fake upstream received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    body: Bytes,
    metadata: MetadataMap,
}

/// An ImageService that records what it receives, as bytes, and answers
/// what `respond` says.
#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    respond: Respond,
}

impl Fake {
    fn new(respond: impl Fn(&str) -> Result<Bytes, Status> + Send + Sync + 'static) -> Fake {
        Fake {
            seen: Arc::default(),
            respond: Arc::new(respond),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

impl NamedService for Fake {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<Body>> for Fake {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = FakeCall {
            fake: self.clone(),
            path: request.uri().path().to_string(),
        };
        Box::pin(async move {
            Ok(tonic::server::Grpc::new(RawCodec)
                .unary(call, request)
                .await)
        })
    }
}

struct FakeCall {
    fake: Fake,
    path: String,
}

impl UnaryService<Bytes> for FakeCall {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        self.fake.seen.lock().push(Seen {
            path: self.path.clone(),
            body: request.get_ref().clone(),
            metadata: request.metadata().clone(),
        });
        let answer = (self.fake.respond)(&self.path).map(|bytes| {
            let mut response = tonic::Response::new(bytes);
            response
                .metadata_mut()
                .insert("x-upstream", "fake".parse().unwrap());
            response
        });
        Box::pin(async move { answer })
    }
}

// --- the observer --------------------------------------------------------------

#[derive(Default)]
struct Recorder {
    pulls: Mutex<Vec<(String, Option<AuthConfig>)>>,
}

impl PullObserver for Recorder {
    fn pulling(&self, image: &str, auth: Option<&AuthConfig>) {
        self.pulls.lock().push((image.to_string(), auth.cloned()));
    }
}

// --- serving ---------------------------------------------------------------------

/// A temp dir with the fake upstream at `upstream.sock` and the proxy to
/// it at `proxy.sock`; both stop with the runtime.
struct Setup {
    dir: TempDir,
    fake: Fake,
    recorder: Arc<Recorder>,
}

impl Setup {
    fn upstream(&self) -> PathBuf {
        self.dir.path().join("upstream.sock")
    }

    fn proxy(&self) -> PathBuf {
        self.dir.path().join("proxy.sock")
    }

    async fn start(fake: Fake) -> Setup {
        let setup = Setup {
            dir: tempfile::tempdir().unwrap(),
            fake,
            recorder: Arc::default(),
        };
        serve_fake(setup.fake.clone(), &setup.upstream());
        let proxy = ImageServiceProxy::new(setup.upstream(), setup.recorder.clone());
        serve_proxy(proxy, &setup.proxy());
        setup
    }
}

fn serve_fake(fake: Fake, socket: &Path) {
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(fake)
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
}

fn serve_proxy(proxy: ImageServiceProxy, socket: &Path) {
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proxy)
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
}

/// Sends `body` to `method` of the ImageService at `socket`, as bytes.
async fn raw_call(
    socket: &Path,
    method: &str,
    body: Bytes,
    metadata: &[(&'static str, &str)],
) -> Result<tonic::Response<Bytes>, Status> {
    let mut client = tonic::client::Grpc::new(connect(socket).await.unwrap());
    client.ready().await.unwrap();
    let mut request = tonic::Request::new(body);
    for (key, value) in metadata {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    let path = http::uri::PathAndQuery::try_from(format!("/{SERVICE}/{method}")).unwrap();
    client.unary(request, path, RawCodec).await
}

/// `message` with fields no version of the proto has appended: a varint
/// (field 999) and a string (field 1000).
fn with_unknown_fields(mut message: Vec<u8>) -> Vec<u8> {
    encode_key(999, WireType::Varint, &mut message);
    encode_varint(42, &mut message);
    prost::encoding::string::encode(1000, &"from the future".to_string(), &mut message);
    message
}

fn spec(image: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

// --- tests -------------------------------------------------------------------------

#[tokio::test]
async fn pull_is_forwarded_byte_for_byte_and_the_observer_sees_the_auth() {
    let answer = Bytes::from(with_unknown_fields(
        api::PullImageResponse {
            image_ref: "sha256:0123".into(),
        }
        .encode_to_vec(),
    ));
    let fake = {
        let answer = answer.clone();
        Fake::new(move |_| Ok(answer.clone()))
    };
    let setup = Setup::start(fake).await;

    // Unknown fields at the top and inside the image spec (field 1).
    let mut body = Vec::new();
    prost::encoding::bytes::encode(
        1,
        &with_unknown_fields(spec("registry.example/app:v1").encode_to_vec()),
        &mut body,
    );
    let auth = api::AuthConfig {
        username: "alice".into(),
        password: "pa55".into(),
        server_address: "registry.example".into(),
        registry_token: "tok".into(),
        ..Default::default()
    };
    prost::encoding::message::encode(2, &auth, &mut body);
    let body = Bytes::from(with_unknown_fields(body));

    let response = raw_call(
        &setup.proxy(),
        "PullImage",
        body.clone(),
        &[("x-request-id", "r-17"), ("grpc-accept-encoding", "gzip")],
    )
    .await
    .unwrap();
    // The answer comes back as the upstream sent it, metadata included.
    assert_eq!(response.get_ref(), &answer);
    assert_eq!(response.metadata().get("x-upstream").unwrap(), "fake");

    let seen = setup.fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/runtime.v1.ImageService/PullImage");
    assert_eq!(
        seen[0].body, body,
        "the bytes reached the upstream unchanged"
    );
    assert_eq!(seen[0].metadata.get("x-request-id").unwrap(), "r-17");
    // Compression is negotiated per hop, not forwarded.
    assert!(seen[0].metadata.get("grpc-accept-encoding").is_none());

    let pulls = setup.recorder.pulls.lock().clone();
    assert_eq!(pulls.len(), 1);
    let (image, seen_auth) = &pulls[0];
    assert_eq!(image, "registry.example/app:v1");
    let seen_auth = seen_auth.as_ref().unwrap();
    assert_eq!(seen_auth, &AuthConfig::from(auth));
    let (user, password) = seen_auth.user_password().unwrap();
    assert_eq!((user.as_str(), password.expose()), ("alice", "pa55"));
    assert_eq!(seen_auth.registry_token().unwrap().expose(), "tok");
    assert_eq!(seen_auth.server_address(), "registry.example");
}

#[tokio::test]
async fn every_image_call_is_forwarded() {
    let fake = Fake::new(|path| {
        let method = path.rsplit('/').next().unwrap_or_default();
        let image = api::Image {
            id: "sha256:1111".into(),
            repo_tags: vec!["registry.example/app:v1".into()],
            size: 1234,
            ..Default::default()
        };
        let answer = match method {
            "ListImages" => api::ListImagesResponse {
                images: vec![image],
            }
            .encode_to_vec(),
            "ImageStatus" => api::ImageStatusResponse {
                image: Some(image),
                info: Default::default(),
            }
            .encode_to_vec(),
            "PullImage" => api::PullImageResponse {
                image_ref: "sha256:1111".into(),
            }
            .encode_to_vec(),
            "RemoveImage" => Vec::new(),
            "ImageFsInfo" => api::ImageFsInfoResponse {
                image_filesystems: vec![api::FilesystemUsage {
                    fs_id: Some(api::FilesystemIdentifier {
                        mountpoint: "/var/lib/containerd".into(),
                    }),
                    ..Default::default()
                }],
                container_filesystems: Vec::new(),
            }
            .encode_to_vec(),
            other => return Err(Status::unimplemented(other.to_string())),
        };
        Ok(Bytes::from(answer))
    });
    let setup = Setup::start(fake).await;
    let client = CriClient::connect(setup.proxy()).await.unwrap();

    let images = client.list_images().await.unwrap();
    assert_eq!(images[0].repo_tags, ["registry.example/app:v1"]);
    let image = client
        .image_status("registry.example/app:v1")
        .await
        .unwrap();
    assert_eq!(image.unwrap().size, 1234);
    let auth =
        AuthConfig::basic("bob", Secret::new("hunter2")).with_server_address("registry.example");
    let image_ref = client
        .pull_image("registry.example/app:v1", Some(&auth))
        .await
        .unwrap();
    assert_eq!(image_ref, "sha256:1111");
    client
        .remove_image("registry.example/app:v1")
        .await
        .unwrap();
    let fs = client.image_fs_info().await.unwrap();
    assert_eq!(
        fs.image_filesystems[0].fs_id.as_ref().unwrap().mountpoint,
        "/var/lib/containerd"
    );

    let paths: Vec<String> = setup.fake.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            "/runtime.v1.ImageService/ListImages",
            "/runtime.v1.ImageService/ImageStatus",
            "/runtime.v1.ImageService/PullImage",
            "/runtime.v1.ImageService/RemoveImage",
            "/runtime.v1.ImageService/ImageFsInfo",
        ]
    );
    let pulls = setup.recorder.pulls.lock().clone();
    assert_eq!(pulls, [("registry.example/app:v1".to_string(), Some(auth))]);
}

#[tokio::test]
async fn an_upstream_status_comes_back_unchanged() {
    let details = Bytes::from_static(b"\x08\x05\x12\x03why");
    let fake = {
        let details = details.clone();
        Fake::new(move |_| {
            Err(Status::with_details(
                Code::NotFound,
                "image \"registry.example/gone:v1\" not found",
                details.clone(),
            ))
        })
    };
    let setup = Setup::start(fake).await;
    let client = CriClient::connect(setup.proxy()).await.unwrap();
    let err = client
        .pull_image("registry.example/gone:v1", None)
        .await
        .unwrap_err();
    let status = err.status().unwrap();
    assert_eq!(status.code(), Code::NotFound, "{err}");
    assert_eq!(
        status.message(),
        "image \"registry.example/gone:v1\" not found"
    );
    assert_eq!(status.details(), details.as_ref());
    // The pull was still announced: the observer runs before the answer.
    assert_eq!(setup.recorder.pulls.lock().len(), 1);
    assert_eq!(setup.recorder.pulls.lock()[0].1, None);
}

#[tokio::test]
async fn a_request_that_does_not_decode_is_forwarded_as_it_is() {
    let fake = Fake::new(|_| Err(Status::invalid_argument("upstream: bad request")));
    let setup = Setup::start(fake).await;
    // A length-delimited field 1 whose length runs past the end.
    let garbage = Bytes::from_static(b"\x0a\x7fshort");
    let err = raw_call(&setup.proxy(), "PullImage", garbage.clone(), &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "upstream: bad request");
    assert_eq!(setup.fake.seen()[0].body, garbage);
    assert!(setup.recorder.pulls.lock().is_empty());
}

#[tokio::test]
async fn an_upstream_that_is_down_is_unavailable_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = dir.path().join("nobody-listens.sock");
    let proxy_socket = dir.path().join("proxy.sock");
    let recorder = Arc::new(Recorder::default());
    serve_proxy(
        ImageServiceProxy::new(upstream.clone(), recorder.clone()),
        &proxy_socket,
    );
    let client = CriClient::connect(&proxy_socket).await.unwrap();
    for _ in 0..2 {
        let err = client.list_images().await.unwrap_err();
        let status = err.status().unwrap();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains(upstream.to_str().unwrap()),
            "{status:?}"
        );
    }

    // Once something listens there, the same proxy reaches it.
    let fake = Fake::new(|_| Ok(Bytes::new()));
    serve_fake(fake.clone(), &upstream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match client.list_images().await {
            Ok(images) => {
                assert!(images.is_empty());
                break;
            }
            Err(err) if std::time::Instant::now() < deadline => {
                assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(err) => panic!("the proxy never reached the upstream: {err}"),
        }
    }
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn a_path_outside_the_image_service_is_unimplemented() {
    use tower::ServiceExt as _;
    let proxy = ImageServiceProxy::new(
        PathBuf::from("/nonexistent/upstream.sock"),
        Arc::new(Recorder::default()),
    );
    for path in [
        "/runtime.v1.RuntimeService/Version",
        "/runtime.v1.ImageService/",
        "/runtime.v1.ImageServiceX/PullImage",
    ] {
        let request = http::Request::builder()
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let response = proxy.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.headers().get("grpc-status").unwrap(),
            &(Code::Unimplemented as i32).to_string(),
            "{path}"
        );
    }
}

#[test]
fn methods_are_read_from_the_path() {
    assert_eq!(
        method_of("/runtime.v1.ImageService/PullImage"),
        Some("PullImage")
    );
    assert_eq!(method_of("/runtime.v1.ImageService/"), None);
    assert_eq!(method_of("/runtime.v1.ImageService/a/b"), None);
    assert_eq!(method_of("/runtime.v1alpha2.ImageService/PullImage"), None);
}
