# Image of the messagio demo project, used by docker-compose.yml for web, worker and beat.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MESSAGIO_VAR_DIR=/app/var

WORKDIR /app

# Dependencies first, so that a code change does not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# Run everything as a plain user: a worker needs no more (and Celery refuses to run one that
# accepts pickle as root).
RUN useradd --system --create-home --home-dir /home/messagio messagio \
    && mkdir -p /app/var \
    && chown messagio:messagio /app/var
USER messagio

EXPOSE 8000
CMD ["python", "manage.py", "runserver", "0.0.0.0:8000", "--noreload"]
