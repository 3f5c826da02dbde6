//! The ec2 provider against moto (the EC2 emulator) in server mode on 127.0.0.1, through
//! the real `clusterform` binary; a proxy in front of moto counts calls and injects
//! faults. One test binary: aws-sdk-ec2 is linked once.

mod cli;
mod faults;
mod lifecycle;
mod provider;
mod proxy;
mod reap;
mod recovery;
mod refresh;
mod support;
