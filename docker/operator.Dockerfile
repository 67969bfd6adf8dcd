# The operator: links neither candle nor ONNX Runtime, so the image is small.
#   docker build -f docker/operator.Dockerfile -t distillery-operator .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p distillery-operator \
 && install -D target/release/distillery-operator /out/distillery-operator

# distroless/cc: glibc and libgcc, no shell, runs as UID 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/distillery-operator /usr/local/bin/distillery-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/distillery-operator"]
CMD ["run"]
