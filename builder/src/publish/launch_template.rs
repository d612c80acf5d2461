//! A new launch template version that boots the new AMI: made from the
//! template's default version with only `ImageId` changed (EC2 copies
//! everything else from the source version), optionally made the default
//! so that an ASG instance refresh rolls the fleet onto the image.
//! If the latest version already boots this AMI, it is reused.

use aws_sdk_ec2::types::RequestLaunchTemplateData;

use super::error::{aws, Error};

#[derive(Debug, Clone)]
pub struct Version {
    pub template_id: String,
    pub number: i64,
    pub created: bool,
    pub is_default: bool,
}

pub async fn new_version(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    name: &str,
    image_id: &str,
    set_default: bool,
) -> Result<Version, Error> {
    let versions = ec2
        .describe_launch_template_versions()
        .launch_template_name(name)
        .versions("$Latest")
        .versions("$Default")
        .send()
        .await
        .map_err(|e| {
            aws("DescribeLaunchTemplateVersions", region, format!("launch template {name}"), e)
        })?;
    let found = versions.launch_template_versions();
    let missing = |what| Error::Incomplete {
        call: "DescribeLaunchTemplateVersions",
        region: region.into(),
        target: format!("launch template {name}"),
        missing: what,
    };
    let default = found
        .iter()
        .find(|v| v.default_version() == Some(true))
        .ok_or_else(|| missing("a default version"))?;
    let template_id =
        default.launch_template_id().ok_or_else(|| missing("a template id"))?.to_string();
    let latest = found
        .iter()
        .max_by_key(|v| v.version_number().unwrap_or(0))
        .ok_or_else(|| missing("a version"))?;
    let boots = |v: &aws_sdk_ec2::types::LaunchTemplateVersion| {
        v.launch_template_data().and_then(|d| d.image_id()) == Some(image_id)
    };

    let (number, created) = if boots(latest) {
        (latest.version_number().ok_or_else(|| missing("a version number"))?, false)
    } else {
        let source = default.version_number().ok_or_else(|| missing("a version number"))?;
        let out = ec2
            .create_launch_template_version()
            .launch_template_id(&template_id)
            .source_version(source.to_string())
            .version_description(format!("keel publish: {image_id}"))
            .launch_template_data(RequestLaunchTemplateData::builder().image_id(image_id).build())
            .send()
            .await
            .map_err(|e| {
                aws("CreateLaunchTemplateVersion", region, format!("launch template {name}"), e)
            })?;
        let v =
            out.launch_template_version().and_then(|v| v.version_number()).ok_or_else(|| {
                Error::Incomplete {
                    call: "CreateLaunchTemplateVersion",
                    region: region.into(),
                    target: format!("launch template {name}"),
                    missing: "a version number",
                }
            })?;
        (v, true)
    };

    let mut is_default = default.version_number() == Some(number);
    if set_default && !is_default {
        ec2.modify_launch_template()
            .launch_template_id(&template_id)
            .default_version(number.to_string())
            .send()
            .await
            .map_err(|e| {
                aws(
                    "ModifyLaunchTemplate",
                    region,
                    format!("launch template {name} default {number}"),
                    e,
                )
            })?;
        is_default = true;
    }
    Ok(Version { template_id, number, created, is_default })
}
