# The worker a DistillationJob or Benchmark pod runs (candle; CUDA optional), with the ONNX
# Runtime library it exports, quantizes and times models in (from the pinned PyPI wheel, checked
# by sha256, as scripts/setup.sh does), and distillery-server beside it: a Benchmark's artifact
# targets are served by server processes the worker starts in its own pod.
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
# candle-onnx compiles onnx.proto at build time; a PROTOC in the environment wins over scripts/protoc.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
ENV PROTOC=/usr/bin/protoc
WORKDIR /src
COPY . .
# The server has no CUDA feature (it links no candle), so it is built on its own.
RUN cargo build --release --locked -p distillery-worker ${FEATURES:+--features $FEATURES} \
 && cargo build --release --locked -p distillery-server \
 && install -D target/release/distillery-worker /out/distillery-worker \
 && install -D target/release/distillery-server /out/distillery-server

FROM python:3.11-slim-bookworm AS ort
ARG ORT_WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
RUN pip download --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
      onnxruntime==1.31.1 -d /wheel \
 && echo "${ORT_WHEEL_SHA256}  $(ls /wheel/*.whl)" | sha256sum -c - \
 && python -c "import zipfile,glob; z=zipfile.ZipFile(glob.glob('/wheel/*.whl')[0]); \
open('/libonnxruntime.so.1.31.1','wb').write(z.read('onnxruntime/capi/libonnxruntime.so.1.31.1'))"

FROM ${RUN_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin distillery
COPY --from=ort /libonnxruntime.so.1.31.1 /opt/onnxruntime/libonnxruntime.so.1.31.1
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1.31.1
COPY --from=build /out/distillery-worker /usr/local/bin/distillery-worker
COPY --from=build /out/distillery-server /usr/local/bin/distillery-server
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/distillery-worker"]
