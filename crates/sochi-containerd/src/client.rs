//! [`Containerd`]: one gRPC connection to containerd's socket, the namespace
//! every call runs in and, optionally, the lease every call runs under.
//!
//! containerd takes both from request metadata: `containerd-namespace`
//! (containerd `pkg/namespaces/grpc.go`) and `containerd-lease`
//! (`leases/grpc.go`). An interceptor adds them to every request, so the
//! service calls in the other files cannot forget them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::{
    content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient,
    leases_client::LeasesClient, snapshots::snapshots_client::SnapshotsClient,
    version_client::VersionClient, AddResourceRequest, CreateRequest, DeleteRequest, Resource,
};
use containerd_client::tonic::{
    self,
    metadata::AsciiMetadataValue,
    service::{interceptor::InterceptedService, Interceptor},
    transport::Channel,
};

use crate::error::{Error, Result};
use crate::labels::GC_EXPIRE;

/// The metadata key of the namespace (containerd `pkg/namespaces/grpc.go`).
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The metadata key of the lease (containerd `leases/grpc.go`).
const LEASE_HEADER: &str = "containerd-lease";

/// A connection to containerd in one namespace, optionally inside a lease.
/// Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Containerd {
    channel: Channel,
    address: PathBuf,
    namespace: String,
    lease: Option<String>,
    headers: Headers,
}

/// The metadata every request carries.
#[derive(Clone, Debug)]
pub(crate) struct Headers {
    namespace: AsciiMetadataValue,
    lease: Option<AsciiMetadataValue>,
}

impl Interceptor for Headers {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        metadata.insert(NAMESPACE_HEADER, self.namespace.clone());
        if let Some(lease) = &self.lease {
            metadata.insert(LEASE_HEADER, lease.clone());
        }
        Ok(request)
    }
}

/// The transport of every service client.
pub(crate) type Service = InterceptedService<Channel, Headers>;

impl Containerd {
    /// Connects to containerd's gRPC socket (e.g.
    /// `/run/containerd/containerd.sock`) for calls in `namespace`.
    pub async fn connect(address: impl AsRef<Path>, namespace: &str) -> Result<Containerd> {
        let address = address.as_ref().to_path_buf();
        if namespace.is_empty() {
            return Err(Error::InvalidArgument {
                what: "namespace",
                detail: "empty".into(),
            });
        }
        let namespace_value = header_value("namespace", namespace)?;
        let channel = containerd_client::connect(&address)
            .await
            .map_err(|source| Error::Connect {
                address: address.clone(),
                source,
            })?;
        Ok(Containerd {
            channel,
            address,
            namespace: namespace.to_string(),
            lease: None,
            headers: Headers {
                namespace: namespace_value,
                lease: None,
            },
        })
    }

    /// The socket path.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The namespace every call runs in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The lease every call runs under, if any.
    pub fn lease(&self) -> Option<&str> {
        self.lease.as_deref()
    }

    /// The same connection, with every call under lease `id`: what it
    /// creates (content, snapshots) is kept from garbage collection until
    /// the lease goes.
    pub fn with_lease(&self, id: &str) -> Result<Containerd> {
        let value = header_value("lease id", id)?;
        let mut leased = self.clone();
        leased.lease = Some(id.to_string());
        leased.headers.lease = Some(value);
        Ok(leased)
    }

    /// containerd's version, e.g. `1.6.20~ds1`.
    pub async fn version(&self) -> Result<String> {
        let mut client =
            VersionClient::with_interceptor(self.channel.clone(), self.headers.clone());
        let response = client
            .version(())
            .await
            .map_err(|status| Error::status("Version.Version", "", status))?;
        Ok(response.into_inner().version)
    }

    /// Creates lease `id`, which containerd's garbage collector drops by
    /// itself `expire_after` from now (label `containerd.io/gc.expire`), in
    /// case whoever made it never deletes it.
    pub async fn create_lease(&self, id: &str, expire_after: Duration) -> Result<()> {
        let expiry = SystemTime::now()
            .checked_add(expire_after)
            .unwrap_or_else(SystemTime::now)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expiry = sochi_format::format_mod_time(i64::try_from(expiry).unwrap_or(i64::MAX), 0);
        let labels = HashMap::from([(GC_EXPIRE.to_string(), expiry)]);
        self.leases()
            .create(CreateRequest {
                id: id.to_string(),
                labels,
            })
            .await
            .map_err(|status| Error::status("Leases.Create", id, status))?;
        Ok(())
    }

    /// Deletes lease `id`; what only it kept becomes garbage.
    pub async fn delete_lease(&self, id: &str) -> Result<()> {
        self.leases()
            .delete(DeleteRequest {
                id: id.to_string(),
                sync: false,
            })
            .await
            .map_err(|status| Error::status("Leases.Delete", id, status))?;
        Ok(())
    }

    /// Adds a resource to this connection's lease, if it has one, so the
    /// garbage collector cannot take it from now on, whether or not it
    /// exists yet. Content or a snapshot that is there without a reference
    /// (left by a pull whose lease is gone) may be collected at any moment:
    /// only after this does finding it mean it stays. `kind` is `content`
    /// or `snapshots/<snapshotter>` (containerd `metadata/leases.go`).
    pub(crate) async fn lease_resource(&self, kind: &str, id: &str) -> Result<()> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        self.leases()
            .add_resource(AddResourceRequest {
                id: lease.clone(),
                resource: Some(Resource {
                    id: id.to_string(),
                    r#type: kind.to_string(),
                }),
            })
            .await
            .map_err(|status| Error::status("Leases.AddResource", id, status))?;
        Ok(())
    }

    pub(crate) fn content(&self) -> ContentClient<Service> {
        ContentClient::with_interceptor(self.channel.clone(), self.headers.clone())
    }

    pub(crate) fn snapshots(&self) -> SnapshotsClient<Service> {
        SnapshotsClient::with_interceptor(self.channel.clone(), self.headers.clone())
    }

    pub(crate) fn diff(&self) -> DiffClient<Service> {
        DiffClient::with_interceptor(self.channel.clone(), self.headers.clone())
    }

    pub(crate) fn images(&self) -> ImagesClient<Service> {
        ImagesClient::with_interceptor(self.channel.clone(), self.headers.clone())
    }

    fn leases(&self) -> LeasesClient<Service> {
        LeasesClient::with_interceptor(self.channel.clone(), self.headers.clone())
    }
}

fn header_value(what: &'static str, text: &str) -> Result<AsciiMetadataValue> {
    AsciiMetadataValue::try_from(text).map_err(|_| Error::InvalidArgument {
        what,
        detail: format!("{text:?} is not a valid gRPC header value"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_namespace_and_lease() {
        let mut headers = Headers {
            namespace: header_value("namespace", "default").unwrap(),
            lease: Some(header_value("lease id", "sochi-pull-1").unwrap()),
        };
        let request = headers.call(tonic::Request::new(())).unwrap();
        let metadata = request.metadata();
        assert_eq!(metadata.get(NAMESPACE_HEADER).unwrap(), "default");
        assert_eq!(metadata.get(LEASE_HEADER).unwrap(), "sochi-pull-1");
    }

    #[test]
    fn a_namespace_with_a_newline_is_refused() {
        assert!(header_value("namespace", "a\nb").is_err());
    }
}
