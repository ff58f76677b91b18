# Multi-stage build: a static-enough release binary on a distroless, non-root base.
#   docker build -t sm-injector .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so that source changes rebuild only the crate.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
 && echo 'fn main() {}' > benches/admission.rs && echo 'fn main() {}' > tests/demo.rs \
 && mkdir -p manifests && touch manifests/mutatingwebhookconfiguration.yaml \
 && cargo build --release --locked --bin sm-injector || true
COPY src src
COPY manifests manifests
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin sm-injector \
 && strip target/release/sm-injector

# glibc, CA certificates and a nonroot user (65532), nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sm-injector /usr/local/bin/sm-injector
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/sm-injector"]
CMD ["serve"]
