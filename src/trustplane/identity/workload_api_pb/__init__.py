"""The SPIFFE Workload API's messages and gRPC service, generated from the vendored
`workload.proto` by `scripts/gen-protos.sh` (see README.md); never edited by hand."""
