# syntax=docker/dockerfile:1
# stockwire gateway image: multi-stage, slim, non-root, one worker per CPU.

# 1. The web screens: msgpack decoder and page code bundled with esbuild.
FROM node:20-slim AS web
WORKDIR /web
COPY clients/web/package.json clients/web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY clients/web/ ./
RUN npm run build

# 2. The Python package and its dependencies, in a virtual environment.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY clients ./clients
COPY loadtest ./loadtest
COPY --from=web /web/dist ./clients/web/dist
RUN python -m venv /opt/stockwire \
 && /opt/stockwire/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/stockwire/bin/pip install --no-cache-dir .

# 3. The runtime: the venv and nothing else.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home stockwire
COPY --from=build /opt/stockwire /opt/stockwire
ENV PATH=/opt/stockwire/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STOCKWIRE_HOST=0.0.0.0 \
    STOCKWIRE_PORT=8765 \
    STOCKWIRE_WORKERS=0 \
    STOCKWIRE_LOG_FORMAT=json \
    STOCKWIRE_LOG_LEVEL=info
USER stockwire
EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STOCKWIRE_PORT', '8765'), timeout=2).status == 200 else 1)"]
ENTRYPOINT ["stockwire"]
CMD ["serve"]
