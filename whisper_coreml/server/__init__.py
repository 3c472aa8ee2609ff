"""An HTTP server for whisper-coreml: OpenAI's transcription API and a durable job queue.

app.py (routes), jobs.py (SQLite job store and the worker), uploads.py (streamed multipart
uploads), render.py (responses from stored transcripts), command.py (`whisper-coreml serve`).
Needs the `server` extra: `pip install 'whisper-coreml[server]'`.
"""
