# wm on CPU: docker build -t wm . && docker run --rm -v "$PWD:/data" wm embed /data/scan.dcm "audit:1234"
# The DICOM node (docs/serve.md): docker build --target serve -t wm-serve . &&
#   docker run -d -p 11112:11112 -v /etc/wm:/etc/wm:ro -v wm-spool:/var/spool/wm wm-serve
#   (its /etc/wm/serve.yaml sets host: 0.0.0.0 with allow_addresses or mutual TLS: a node refuses
#   to listen beyond loopback without a check on who calls)
FROM python:3.11-slim AS base
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# torch first and pinned, so that the project's range cannot pull a newer release.
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY watermark_cli ./watermark_cli
COPY models ./models
RUN pip install .
# wm's compiled kernels (numba): compiled into the image, not by every container's first command.
RUN python -c "import watermark_cli.polar_decoder, watermark_cli.marking.fold_kernel"

FROM base AS serve
# The spool must outlive the container: nothing received is lost across restarts.
VOLUME /var/spool/wm
EXPOSE 11112
# SIGTERM (docker stop) drains in-flight work and exits 0; give it time: docker stop -t 60.
STOPSIGNAL SIGTERM
ENTRYPOINT ["wm", "serve", "--config", "/etc/wm/serve.yaml", "--spool", "/var/spool/wm"]

FROM base AS cli
WORKDIR /data
ENTRYPOINT ["wm"]
CMD ["--help"]
