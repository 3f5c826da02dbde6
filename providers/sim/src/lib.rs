//! sim provider
