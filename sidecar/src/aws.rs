//! AWS configuration: the standard credential chain and region (environment, profile,
//! container or instance role), with endpoint overrides for STS and SageMaker (private
//! VPC endpoints, or a local emulator in tests).

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

use crate::config::AwsConfig;

/// The base SDK configuration every AWS client of the sidecar starts from.
pub async fn load(config: &AwsConfig) -> SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder().operation_timeout(config.timeout).build();
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).http_client(http_client()).timeout_config(timeouts);
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    loader.load().await
}

/// The HTTP client of every AWS client (and of the credential providers that
/// `aws_config` loads): the SDK's own hyper 1 client, with rustls on ring, the one crypto
/// library the rest of the sidecar uses (the SDK's default would bring aws-lc as a
/// second), trusting the system's roots as the SDK's default does, so that the CA of an
/// enterprise's TLS-inspecting proxy, installed on the host, is trusted here too.
pub fn http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https()
}

/// STS clients for the regions that have an endpoint of their own (`sts_endpoints`),
/// each in its region.
pub fn regional_sts(base: &SdkConfig, config: &AwsConfig) -> std::collections::HashMap<String, aws_sdk_sts::Client> {
    config
        .sts_endpoints
        .iter()
        .map(|(region, endpoint)| {
            let conf = aws_sdk_sts::config::Builder::from(base)
                .interceptor(crate::otel::AwsTraceContext)
                .region(Region::new(region.clone()))
                .endpoint_url(endpoint.clone())
                .build();
            (region.clone(), aws_sdk_sts::Client::from_conf(conf))
        })
        .collect()
}

/// An STS client, through `sts_endpoint` when configured.
pub fn sts(base: &SdkConfig, config: &AwsConfig) -> aws_sdk_sts::Client {
    let mut builder = aws_sdk_sts::config::Builder::from(base).interceptor(crate::otel::AwsTraceContext);
    if let Some(endpoint) = &config.sts_endpoint {
        builder = builder.endpoint_url(endpoint.clone());
    }
    aws_sdk_sts::Client::from_conf(builder.build())
}
