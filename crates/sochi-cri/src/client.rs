//! [`CriClient`]: the CRI calls sochi makes, typed, over a unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::Channel;

use crate::api;
use crate::api::image_service_client::ImageServiceClient;
use crate::api::runtime_service_client::RuntimeServiceClient;
use crate::auth::AuthConfig;
use crate::error::{Error, Result};
use crate::unix::{connect, MAX_MESSAGE_SIZE};

/// A connection to a CRI runtime (containerd serves CRI on its main
/// socket). Cheap to clone; clones share the connection, which tonic makes
/// again when it breaks (a restarted runtime).
#[derive(Clone, Debug)]
pub struct CriClient {
    address: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the runtime listening on the unix socket `address`.
    pub async fn connect(address: impl AsRef<Path>) -> Result<CriClient> {
        let address = address.as_ref().to_path_buf();
        let channel = connect(&address).await.map_err(|source| Error::Connect {
            address: address.clone(),
            source,
        })?;
        Ok(CriClient {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            address,
        })
    }

    /// The socket.
    pub fn address(&self) -> &Path {
        &self.address
    }

    fn failed(&self, method: &'static str) -> impl FnOnce(tonic::Status) -> Error + '_ {
        move |status| Error::Call {
            method,
            address: self.address.clone(),
            status: Box::new(status),
        }
    }

    fn missing(&self, method: &'static str, field: &'static str) -> Error {
        Error::MissingField {
            method,
            address: self.address.clone(),
            field,
        }
    }

    // --- RuntimeService ---

    /// The runtime's name and versions (and the CRI version it speaks).
    pub async fn version(&self) -> Result<api::VersionResponse> {
        let request = api::VersionRequest {
            // What the kubelet sends (`kubeRuntimeAPIVersion`).
            version: "0.1.0".to_string(),
        };
        let response = self.runtime.clone().version(request).await;
        Ok(response.map_err(self.failed("Version"))?.into_inner())
    }

    /// Creates and starts a pod sandbox; returns its ID.
    pub async fn run_pod_sandbox(&self, config: api::PodSandboxConfig) -> Result<String> {
        let request = api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let response = self.runtime.clone().run_pod_sandbox(request).await;
        let id = response
            .map_err(self.failed("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id;
        if id.is_empty() {
            return Err(self.missing("RunPodSandbox", "pod_sandbox_id"));
        }
        Ok(id)
    }

    /// Stops the sandbox's processes (and its containers). Idempotent.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let request = api::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        let response = self.runtime.clone().stop_pod_sandbox(request).await;
        response.map_err(self.failed("StopPodSandbox"))?;
        Ok(())
    }

    /// Removes the sandbox (and its containers). Idempotent.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let request = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        let response = self.runtime.clone().remove_pod_sandbox(request).await;
        response.map_err(self.failed("RemovePodSandbox"))?;
        Ok(())
    }

    /// The sandbox's status; with `verbose`, the runtime's `info` too.
    pub async fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<api::PodSandboxStatusResponse> {
        let request = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose,
        };
        let response = self.runtime.clone().pod_sandbox_status(request).await;
        Ok(response
            .map_err(self.failed("PodSandboxStatus"))?
            .into_inner())
    }

    /// Every sandbox the runtime knows.
    pub async fn list_pod_sandbox(&self) -> Result<Vec<api::PodSandbox>> {
        let request = api::ListPodSandboxRequest { filter: None };
        let response = self.runtime.clone().list_pod_sandbox(request).await;
        Ok(response
            .map_err(self.failed("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    /// Creates a container in sandbox `sandbox_id` (made from
    /// `sandbox_config`); returns its ID.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: api::ContainerConfig,
        sandbox_config: api::PodSandboxConfig,
    ) -> Result<String> {
        let request = api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let response = self.runtime.clone().create_container(request).await;
        let id = response
            .map_err(self.failed("CreateContainer"))?
            .into_inner()
            .container_id;
        if id.is_empty() {
            return Err(self.missing("CreateContainer", "container_id"));
        }
        Ok(id)
    }

    /// Starts a created container.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let request = api::StartContainerRequest {
            container_id: id.to_string(),
        };
        let response = self.runtime.clone().start_container(request).await;
        response.map_err(self.failed("StartContainer"))?;
        Ok(())
    }

    /// Stops a container: SIGTERM, then SIGKILL after `grace` (whole
    /// seconds; zero kills at once). Idempotent.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let request = api::StopContainerRequest {
            container_id: id.to_string(),
            timeout: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
        };
        let response = self.runtime.clone().stop_container(request).await;
        response.map_err(self.failed("StopContainer"))?;
        Ok(())
    }

    /// Removes a container (killing it if it runs). Idempotent.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let request = api::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        let response = self.runtime.clone().remove_container(request).await;
        response.map_err(self.failed("RemoveContainer"))?;
        Ok(())
    }

    /// The container's status; with `verbose`, the runtime's `info` too
    /// (containerd: a JSON document under `info` with the task's `pid`).
    pub async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<api::ContainerStatusResponse> {
        let request = api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose,
        };
        let response = self.runtime.clone().container_status(request).await;
        Ok(response
            .map_err(self.failed("ContainerStatus"))?
            .into_inner())
    }

    /// The containers that pass `filter` (the default passes all).
    pub async fn list_containers(
        &self,
        filter: api::ContainerFilter,
    ) -> Result<Vec<api::Container>> {
        let request = api::ListContainersRequest {
            filter: Some(filter),
        };
        let response = self.runtime.clone().list_containers(request).await;
        Ok(response
            .map_err(self.failed("ListContainers"))?
            .into_inner()
            .containers)
    }

    // --- ImageService ---

    /// Every image the runtime has.
    pub async fn list_images(&self) -> Result<Vec<api::Image>> {
        let request = api::ListImagesRequest { filter: None };
        let response = self.images.clone().list_images(request).await;
        Ok(response
            .map_err(self.failed("ListImages"))?
            .into_inner()
            .images)
    }

    /// The image `image` (a reference or an image ID), `None` when the
    /// runtime does not have it.
    pub async fn image_status(&self, image: &str) -> Result<Option<api::Image>> {
        let request = api::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        let response = self.images.clone().image_status(request).await;
        Ok(response
            .map_err(self.failed("ImageStatus"))?
            .into_inner()
            .image)
    }

    /// Pulls `image` with `auth`, if given; returns the image reference the
    /// runtime answers (containerd: the image ID).
    pub async fn pull_image(&self, image: &str, auth: Option<&AuthConfig>) -> Result<String> {
        let request = api::PullImageRequest {
            image: Some(image_spec(image)),
            auth: auth.map(AuthConfig::to_wire),
            sandbox_config: None,
        };
        let response = self.images.clone().pull_image(request).await;
        let image_ref = response
            .map_err(self.failed("PullImage"))?
            .into_inner()
            .image_ref;
        if image_ref.is_empty() {
            return Err(self.missing("PullImage", "image_ref"));
        }
        Ok(image_ref)
    }

    /// Removes `image`. Idempotent.
    pub async fn remove_image(&self, image: &str) -> Result<()> {
        let request = api::RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        let response = self.images.clone().remove_image(request).await;
        response.map_err(self.failed("RemoveImage"))?;
        Ok(())
    }

    /// The filesystems that hold images and containers, and their use.
    pub async fn image_fs_info(&self) -> Result<api::ImageFsInfoResponse> {
        let response = self
            .images
            .clone()
            .image_fs_info(api::ImageFsInfoRequest {})
            .await;
        Ok(response.map_err(self.failed("ImageFsInfo"))?.into_inner())
    }
}

/// An `ImageSpec` naming `image` and nothing else.
fn image_spec(image: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: image.to_string(),
        ..api::ImageSpec::default()
    }
}
