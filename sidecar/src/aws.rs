//! AWS configuration: the standard credential chain and region (environment, profile,
//! container or instance role), with endpoint overrides for STS and SageMaker (private
//! VPC endpoints, or a local emulator in tests).

use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::config::AwsConfig;

/// The base SDK configuration every AWS client of the sidecar starts from.
pub async fn load(config: &AwsConfig) -> SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder().operation_timeout(config.timeout).build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    loader.load().await
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
