# The ONNX Runtime inference server a ModelDeployment runs: no candle, no CUDA.
# libonnxruntime comes from the pinned PyPI wheel, checked by sha256 (as scripts/setup.sh does).
#   docker build -f docker/server.Dockerfile -t distillery-server .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p distillery-server \
 && install -D target/release/distillery-server /out/distillery-server

FROM python:3.11-slim-bookworm AS ort
ARG ORT_WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
RUN pip download --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
      onnxruntime==1.31.1 -d /wheel \
 && echo "${ORT_WHEEL_SHA256}  $(ls /wheel/*.whl)" | sha256sum -c - \
 && python -c "import zipfile,glob; z=zipfile.ZipFile(glob.glob('/wheel/*.whl')[0]); \
open('/libonnxruntime.so.1.31.1','wb').write(z.read('onnxruntime/capi/libonnxruntime.so.1.31.1'))"

# glibc >= 2.28 and libstdc++ are what libonnxruntime needs (no Alpine/musl).
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin distillery
COPY --from=ort /libonnxruntime.so.1.31.1 /opt/onnxruntime/libonnxruntime.so.1.31.1
COPY --from=build /out/distillery-server /usr/local/bin/distillery-server
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1.31.1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/distillery-server"]
