//! Copying the AMI to the other regions, all at once, each reusing a copy
//! made before (found by the image-sha256 tag) and waiting until it is
//! available. Every region is attempted; failures are reported together.

use aws_types::SdkConfig;
use futures::future::join_all;
use keel_bootstrap::aws::in_region;

use super::ami::{self, Ami};
use super::error::{aws, Error};
use super::image::Image;

/// A region's AMI and whether it was there before this run.
#[derive(Debug, Clone)]
pub struct Placed {
    pub region: String,
    pub ami: Ami,
    pub reused: bool,
}

/// Copies `source` (in `source_region`) to every region in `regions`.
pub async fn copy_all(
    config: &SdkConfig,
    source_region: &str,
    source: &Ami,
    regions: &[String],
    image: &Image,
) -> Result<Vec<Placed>, Vec<Error>> {
    let results =
        join_all(regions.iter().map(|r| copy_one(config, source_region, source, r, image))).await;
    let (ok, err): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    if err.is_empty() {
        Ok(ok.into_iter().filter_map(Result::ok).collect())
    } else {
        Err(err.into_iter().filter_map(Result::err).collect())
    }
}

async fn copy_one(
    config: &SdkConfig,
    source_region: &str,
    source: &Ami,
    region: &str,
    image: &Image,
) -> Result<Placed, Error> {
    let ec2 = aws_sdk_ec2::Client::new(&in_region(config, region));
    if let Some(found) = ami::find(&ec2, region, image).await? {
        let ami = ami::wait_available(&ec2, region, &found.image_id).await?;
        tag_all(&ec2, region, &ami, image).await?;
        return Ok(Placed { region: region.into(), ami, reused: true });
    }
    let out = ec2
        .copy_image()
        .source_region(source_region)
        .source_image_id(&source.image_id)
        .name(image.ami_name())
        .description(image.description())
        .client_token(copy_token(&source.image_id, image.sha256()))
        .send()
        .await
        .map_err(|e| {
            aws("CopyImage", region, format!("{} from {source_region}", source.image_id), e)
        })?;
    let image_id = out.image_id().ok_or_else(|| Error::Incomplete {
        call: "CopyImage",
        region: region.into(),
        target: source.image_id.clone(),
        missing: "an image id",
    })?;
    // Tag at once so that a rerun finds a copy still in progress.
    ami::tag(&ec2, region, &[image_id], image).await?;
    let ami = ami::wait_available(&ec2, region, image_id).await?;
    tag_all(&ec2, region, &ami, image).await?;
    Ok(Placed { region: region.into(), ami, reused: false })
}

async fn tag_all(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    ami: &Ami,
    image: &Image,
) -> Result<(), Error> {
    let mut resources = vec![ami.image_id.as_str()];
    resources.extend(ami.snapshot_id.as_deref());
    ami::tag(ec2, region, &resources, image).await
}

/// CopyImage's idempotency token: a retried call returns the same copy.
/// It names the source AMI, so a new source is a new copy. (At most 64
/// characters: 5 + 21 + 1 + 32.)
fn copy_token(source_ami: &str, sha256: &str) -> String {
    format!("keel-{source_ami}-{}", &sha256[..32.min(sha256.len())])
}
