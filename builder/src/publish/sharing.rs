//! Launch permissions: the listed AWS accounts may launch the AMI.

use aws_sdk_ec2::types::{LaunchPermission, LaunchPermissionModifications};

use super::error::{aws, Error};

/// Adds launch permissions for `accounts` (adding one that is already
/// there is not an error, so reruns are fine).
pub async fn share(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    image_id: &str,
    accounts: &[String],
) -> Result<(), Error> {
    if accounts.is_empty() {
        return Ok(());
    }
    let add = accounts.iter().map(|a| LaunchPermission::builder().user_id(a).build()).collect();
    ec2.modify_image_attribute()
        .image_id(image_id)
        .launch_permission(LaunchPermissionModifications::builder().set_add(Some(add)).build())
        .send()
        .await
        .map_err(|e| {
            aws(
                "ModifyImageAttribute",
                region,
                format!("{image_id} launchPermission {}", accounts.join(",")),
                e,
            )
        })?;
    Ok(())
}

/// An AWS account id: twelve digits.
pub fn parse_account(s: &str) -> Result<String, String> {
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not an AWS account id (12 digits)"))
    }
}
