//! Network-namespace topology for the end-to-end suite.
