"""`imagesearch`: a command-line client for the image-search service's HTTP API.

Only the standard library is imported at start-up, so `imagesearch --help` is quick;
the HTTP client (aiohttp) and boto3 are imported by the commands that need them.
"""
