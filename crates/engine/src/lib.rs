//! clusterform engine: refresh, plan, apply, destroy.
