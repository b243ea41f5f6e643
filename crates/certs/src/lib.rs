//! Private PKI for a longlink cluster.
