# The worker a DistillationJob or Benchmark pod runs (candle; CUDA optional).
#   CPU:  docker build -f docker/worker.Dockerfile -t distillery-worker .
#   CUDA: docker build -f docker/worker.Dockerfile -t distillery-worker:cuda \
#           --build-arg FEATURES=cuda \
#           --build-arg BUILD_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04 \
#           --build-arg RUN_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 .
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUN_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
ARG FEATURES=""
# The CUDA images carry no Rust toolchain; the rust image already has one.
RUN if ! command -v cargo >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
      && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0; \
    fi
ENV PATH=/root/.cargo/bin:/usr/local/cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p distillery-worker ${FEATURES:+--features $FEATURES} \
 && install -D target/release/distillery-worker /out/distillery-worker

FROM ${RUN_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin distillery
COPY --from=build /out/distillery-worker /usr/local/bin/distillery-worker
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/distillery-worker"]
