//! The `ec2` provider: AWS EC2 through `aws-sdk-ec2`. A `network` is a VPC with its
//! internet gateway, route table and security groups; a `subnet` is a subnet in one
//! availability zone; a `machine` is a Flatcar instance booted with its Ignition config
//! as user data. Credentials come from the AWS default chain and never leave the SDK.
//!
//! - [`Ec2Provider`] implements the engine's `Reader` and `Provider` traits.
//! - [`schema`] lists the kinds and attributes; [`Ec2Settings`] reads `[provider.ec2]`.
//! - [`encode_user_data`] checks EC2's 16 KB user-data limit.

mod api;
mod cloud;
mod errors;
mod factory;
mod instance;
mod network;
mod provider;
mod schema;
mod settings;
mod subnet;
mod tags;
mod waiter;

pub use errors::{ApiError, Class};
pub use factory::factory;
pub use instance::{USER_DATA_MAX, encode_user_data};
pub use provider::{Ec2Provider, MAX_BATCH};
pub use schema::{PROVIDER_NAME, schema};
pub use settings::{Ec2Settings, FLATCAR_AMI_OWNER};
