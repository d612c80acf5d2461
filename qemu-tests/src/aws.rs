//! The emulated AWS account of one test run: moto's server on the VM
//! network's host address (so guests reach it too), a VPC and subnet that
//! match the network's /24, each VM registered as an EC2 instance with its
//! DHCP address and the cluster and role tags, and the S3 bucket and KMS
//! key that hold the cluster's assets. Everything goes through the AWS SDK
//! configured by `keel_bootstrap::aws`, as the builder and the nodes do.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aws_sdk_ec2::types::{
    ArchitectureValues, BootModeValues, InstanceType, Placement, ResourceType, Tag,
    TagSpecification,
};
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use keel_bootstrap::aws::{display_error, s3_client, sdk_config, Target};
use keel_bootstrap::discovery;
use keel_contract::{tags, Role};
use keel_testkit::moto::Moto;

/// The region of every test account.
pub const REGION: &str = "eu-central-1";
/// The one availability zone the test subnet lives in.
pub const AZ: &str = "eu-central-1a";
/// moto accepts any credentials; these are also what the metadata
/// emulator hands the guests as their role credentials.
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";

/// An instance registered for a VM.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub private_ip: Ipv4Addr,
    pub role: Role,
}

/// moto plus the clients and resources of one test run.
pub struct Account {
    moto: Moto,
    pub ec2: aws_sdk_ec2::Client,
    pub s3: aws_sdk_s3::Client,
    pub kms: aws_sdk_kms::Client,
    pub cluster: String,
    pub subnet_id: String,
    pub bucket: String,
    pub kms_key_id: String,
}

/// The SDK configuration for an endpoint, with the test credentials.
pub async fn test_config(endpoint: &str) -> aws_config::SdkConfig {
    let target = Target { region: Some(REGION.into()), endpoint_url: Some(endpoint.into()) };
    keel_testkit::moto::with_keys(sdk_config(&target).await, ACCESS_KEY_ID, SECRET_ACCESS_KEY)
}

impl Account {
    /// Starts moto on `host_ip` and creates the VPC and subnet `cidr`
    /// (the VM network's /24), the asset bucket and the KMS key.
    pub async fn create(host_ip: Ipv4Addr, cidr: &str, cluster: &str) -> Result<Account> {
        let moto = Moto::start_on(host_ip)?;
        let config = test_config(&moto.endpoint).await;
        let ec2 = aws_sdk_ec2::Client::new(&config);
        let s3 = s3_client(&config);
        let kms = aws_sdk_kms::Client::new(&config);

        let vpc = ec2
            .create_vpc()
            .cidr_block(cidr)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("CreateVpc {cidr}: {}", display_error(&e)))?;
        let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).context("CreateVpc returned no VPC id")?;
        let subnet = ec2
            .create_subnet()
            .vpc_id(vpc_id)
            .cidr_block(cidr)
            .availability_zone(AZ)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("CreateSubnet {cidr} in {vpc_id}: {}", display_error(&e))
            })?;
        let subnet_id = subnet
            .subnet()
            .and_then(|s| s.subnet_id())
            .context("CreateSubnet returned no subnet id")?
            .to_string();

        let bucket = format!("keel-{cluster}-assets");
        s3.create_bucket()
            .bucket(&bucket)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(REGION))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("CreateBucket {bucket}: {}", display_error(&e)))?;
        let key = kms
            .create_key()
            .description(format!("keel assets of cluster {cluster}"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("KMS CreateKey: {}", display_error(&e)))?;
        let kms_key_id = key
            .key_metadata()
            .map(|m| m.key_id().to_string())
            .context("KMS CreateKey returned no key id")?;

        Ok(Account { moto, ec2, s3, kms, cluster: cluster.into(), subnet_id, bucket, kms_key_id })
    }

    /// moto's endpoint, reachable from the host and from the guests.
    pub fn endpoint(&self) -> &str {
        &self.moto.endpoint
    }

    /// moto's address (what the TLS proxy for the endpoint names forwards to).
    pub fn moto_addr(&self) -> Result<std::net::SocketAddr> {
        let hostport = self.moto.endpoint.trim_start_matches("http://");
        hostport.parse().with_context(|| format!("moto's endpoint {:?}", self.moto.endpoint))
    }

    /// Environment for a child process (`keel assets publish`, ...) to
    /// reach this account.
    pub fn env(&self) -> Vec<(String, String)> {
        self.moto.env(REGION)
    }

    /// Registers an AMI for a built image of `role` (moto keeps no disk
    /// behind it; the VMs boot the image file itself).
    pub async fn register_image(&self, name: &str, role: Role) -> Result<String> {
        let out = self
            .ec2
            .register_image()
            .name(name)
            .architecture(ArchitectureValues::X8664)
            .boot_mode(BootModeValues::Uefi)
            .root_device_name("/dev/xvda")
            .virtualization_type("hvm")
            .ena_support(true)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("RegisterImage {name}: {}", display_error(&e)))?;
        let ami = out.image_id().context("RegisterImage returned no image id")?.to_string();
        // moto ignores tags given inline to RegisterImage (DESIGN.md).
        self.ec2
            .create_tags()
            .resources(&ami)
            .tags(tag(tags::ROLE, role.as_str()))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("CreateTags on {ami}: {}", display_error(&e)))?;
        Ok(ami)
    }

    /// RunInstances for one VM: its DHCP address as the private IP, the
    /// cluster and role tags, the AMI of its image.
    pub async fn run_instance(
        &self,
        ami: &str,
        role: Role,
        private_ip: Ipv4Addr,
        name: &str,
    ) -> Result<Instance> {
        self.launch(ami, role, private_ip, name, Some(&self.subnet_id)).await
    }

    /// [`Account::run_instance`] at the address of a terminated instance,
    /// as EC2 hands it to the next instance. moto 5.2.5 keeps a terminated
    /// instance's address reserved in its subnet ("IP already in use";
    /// AWS releases it), so this one instance is launched without the
    /// subnet: moto places it in the default VPC with the requested
    /// address. keel-bootstrap never looks at subnets or VPCs (tags,
    /// instance ids and addresses only), so the node sees what it would
    /// see on EC2.
    pub async fn run_instance_at_reused_ip(
        &self,
        ami: &str,
        role: Role,
        private_ip: Ipv4Addr,
        name: &str,
    ) -> Result<Instance> {
        self.launch(ami, role, private_ip, name, None).await
    }

    async fn launch(
        &self,
        ami: &str,
        role: Role,
        private_ip: Ipv4Addr,
        name: &str,
        subnet_id: Option<&str>,
    ) -> Result<Instance> {
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(tag(tags::CLUSTER, &self.cluster))
            .tags(tag(tags::ROLE, role.as_str()))
            .tags(tag("Name", name))
            .build();
        let out = self
            .ec2
            .run_instances()
            .image_id(ami)
            .instance_type(InstanceType::T3Medium)
            .min_count(1)
            .max_count(1)
            .set_subnet_id(subnet_id.map(str::to_string))
            .private_ip_address(private_ip.to_string())
            .placement(Placement::builder().availability_zone(AZ).build())
            .tag_specifications(spec)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("RunInstances {name} ({role}, {private_ip}): {}", display_error(&e))
            })?;
        let inst = out.instances().first().context("RunInstances returned no instance")?;
        let id = inst.instance_id().context("RunInstances returned no instance id")?.to_string();
        let got = inst.private_ip_address().unwrap_or_default();
        if got != private_ip.to_string() {
            anyhow::bail!(
                "RunInstances {name}: instance {id} got private IP {got:?}, expected {private_ip}"
            );
        }
        Ok(Instance { id, private_ip, role })
    }

    /// TerminateInstances for one instance (the replacement scenario).
    pub async fn terminate(&self, instance_id: &str) -> Result<()> {
        self.ec2.terminate_instances().instance_ids(instance_id).send().await.map_err(|e| {
            anyhow::anyhow!("TerminateInstances {instance_id}: {}", display_error(&e))
        })?;
        Ok(())
    }

    /// The pending or running instances of this cluster with `role`, as
    /// (instance id, private IP), sorted by id: what a node's discovery
    /// sees, found by the node's own code (`keel_bootstrap::discovery`).
    pub async fn live_members(&self, role: Role) -> Result<Vec<(String, String)>> {
        let peers =
            discovery::list(&self.ec2, &self.cluster, role, &discovery::Counter::default()).await?;
        Ok(peers.into_iter().map(|p| (p.instance_id, p.private_ip)).collect())
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}
