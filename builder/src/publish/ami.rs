//! AMIs in one region: finding the one made before from the same image
//! (by the image-sha256 tag, then by name), registering a new one from a
//! snapshot, tagging, and waiting until it is available.

use std::time::Duration;

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter,
    Image as Ec2Image, ImdsSupportValues, ResourceType, Tag, TagSpecification, VolumeType,
};
use keel_bootstrap::retry::Policy;
use keel_contract::tags;

use super::error::{aws, Error};
use super::image::Image;
use super::wait::{until_state, Seen};

/// The root device: the whole disk image, booted by UEFI.
pub const ROOT_DEVICE: &str = "/dev/xvda";

/// Waiting for an AMI (a copy across regions takes minutes to tens of
/// minutes on AWS).
const AVAILABLE_WAIT: Policy = Policy {
    initial: Duration::from_secs(2),
    max_delay: Duration::from_secs(30),
    deadline: Duration::from_secs(60 * 60),
    max_attempts: 500,
};

/// An AMI of this image in one region.
#[derive(Debug, Clone)]
pub struct Ami {
    pub image_id: String,
    /// The root snapshot, when EC2 reports one.
    pub snapshot_id: Option<String>,
    pub state: String,
}

impl Ami {
    fn from_ec2(image: &Ec2Image) -> Option<Ami> {
        let snapshot_id = image
            .block_device_mappings()
            .iter()
            .filter(|m| {
                m.device_name() == Some(ROOT_DEVICE) || image.block_device_mappings().len() == 1
            })
            .find_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string));
        Some(Ami {
            image_id: image.image_id()?.to_string(),
            snapshot_id,
            state: image.state().map(|s| s.as_str().to_string()).unwrap_or_default(),
        })
    }
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

/// Our AMI of this image in the region, pending or available: first by
/// the image-sha256 tag, then by name (an AMI registered by a run that
/// died before tagging it). Failed and deregistered AMIs are ignored.
pub async fn find(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    image: &Image,
) -> Result<Option<Ami>, Error> {
    let by_tag = filter(&tags::filter_name(tags::IMAGE_SHA256), &[image.sha256()]);
    let name = image.ami_name();
    let by_name = filter("name", &[&name]);
    let target = format!("{}={}", tags::IMAGE_SHA256, image.sha256());
    for f in [by_tag, by_name] {
        let out = ec2
            .describe_images()
            .owners("self")
            .filters(f)
            .filters(filter("state", &["available", "pending"]))
            .send()
            .await
            .map_err(|e| aws("DescribeImages", region, target.clone(), e))?;
        let mut found: Vec<Ami> = out.images().iter().filter_map(Ami::from_ec2).collect();
        // Oldest id first, so that every run picks the same one.
        found.sort_by(|a, b| a.image_id.cmp(&b.image_id));
        if let Some(ami) = found.into_iter().next() {
            return Ok(Some(ami));
        }
    }
    Ok(None)
}

/// A completed snapshot of this image left by a run whose registration
/// failed. Snapshots are tagged only once complete (see `ebs`), so a half
/// upload is never found here.
pub async fn find_snapshot(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    image: &Image,
) -> Result<Option<String>, Error> {
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(filter(&tags::filter_name(tags::IMAGE_SHA256), &[image.sha256()]))
        .filters(filter("status", &["completed"]))
        .send()
        .await
        .map_err(|e| {
            aws(
                "DescribeSnapshots",
                region,
                format!("{}={}", tags::IMAGE_SHA256, image.sha256()),
                e,
            )
        })?;
    let mut ids: Vec<String> =
        out.snapshots().iter().filter_map(|s| s.snapshot_id().map(str::to_string)).collect();
    ids.sort();
    Ok(ids.into_iter().next())
}

fn ec2_tags(image: &Image) -> Vec<Tag> {
    image.tags().into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

/// Puts the image's tags on AMIs and snapshots (idempotent).
pub async fn tag(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    resources: &[&str],
    image: &Image,
) -> Result<(), Error> {
    ec2.create_tags()
        .set_resources(Some(resources.iter().map(|r| r.to_string()).collect()))
        .set_tags(Some(ec2_tags(image)))
        .send()
        .await
        .map_err(|e| aws("CreateTags", region, resources.join(", "), e))?;
    Ok(())
}

/// Registers an AMI booting `snapshot_id`: hvm, x86_64, ENA, UEFI, IMDSv2
/// only, gp3 root volume, and Secure Boot keys when `uefi_data` is given. The tags are given inline (so the AMI is never
/// untagged on AWS) and the caller puts them on again with CreateTags.
pub async fn register(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    image: &Image,
    snapshot_id: &str,
    uefi_data: Option<&str>,
) -> Result<String, Error> {
    let root = BlockDeviceMapping::builder()
        .device_name(ROOT_DEVICE)
        .ebs(
            EbsBlockDevice::builder()
                .snapshot_id(snapshot_id)
                .volume_type(VolumeType::Gp3)
                .delete_on_termination(true)
                .build(),
        )
        .build();
    let out = ec2
        .register_image()
        .name(image.ami_name())
        .description(image.description())
        .architecture(ArchitectureValues::X8664)
        .virtualization_type("hvm")
        .root_device_name(ROOT_DEVICE)
        .block_device_mappings(root)
        .ena_support(true)
        .boot_mode(BootModeValues::Uefi)
        .imds_support(ImdsSupportValues::V20)
        // PK, KEK and db of a signed image (secureboot::uefidata).
        .set_uefi_data(uefi_data.map(str::to_string))
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Image)
                .set_tags(Some(ec2_tags(image)))
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            aws("RegisterImage", region, format!("{} from {snapshot_id}", image.ami_name()), e)
        })?;
    out.image_id().map(str::to_string).ok_or_else(|| Error::Incomplete {
        call: "RegisterImage",
        region: region.into(),
        target: snapshot_id.into(),
        missing: "an image id",
    })
}

/// Waits until `image_id` is available.
pub async fn wait_available(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    image_id: &str,
) -> Result<Ami, Error> {
    let what = format!("AMI {image_id}");
    until_state(
        &AVAILABLE_WAIT,
        &what,
        region,
        "available",
        |s| s == "pending",
        || async {
            let out = ec2
                .describe_images()
                .image_ids(image_id)
                .send()
                .await
                .map_err(|e| aws("DescribeImages", region, image_id, e))?;
            let image = out.images().first();
            let ami = image.and_then(Ami::from_ec2);
            Ok(Seen {
                state: ami.as_ref().map(|a| a.state.clone()).unwrap_or_else(|| "missing".into()),
                reason: image
                    .and_then(|i| i.state_reason())
                    .and_then(|r| r.message())
                    .unwrap_or("no reason given")
                    .to_string(),
                value: ami,
            })
        },
    )
    .await
}
