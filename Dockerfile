# wm on CPU: docker build -t wm . && docker run --rm -v "$PWD:/data" wm embed /data/scan.dcm "audit:1234"
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# torch first and pinned, so that the project's range cannot pull a newer release.
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY watermark_cli ./watermark_cli
RUN pip install .
WORKDIR /data
ENTRYPOINT ["wm"]
CMD ["--help"]
