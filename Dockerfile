# The image every Keel service runs from (docker-compose.yml, deploy/).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY keel keel
COPY schemas schemas
COPY producers producers
COPY streams streams
COPY consumers consumers
COPY connectors connectors
RUN pip install --no-cache-dir .
ENV KEEL_LOG_FORMAT=json
ENTRYPOINT ["keel"]
