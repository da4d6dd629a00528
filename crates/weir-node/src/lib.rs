#![deny(unsafe_code)]
pub mod capture;
