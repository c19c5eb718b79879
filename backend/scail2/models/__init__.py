"""The networks, one model per file: the SCAIL-2 DiT (`transformer_scail2`) with its RoPE tables (`rope`), the Wan
video VAE (`vae`), the umT5 text encoder (`text_encoder`) and the CLIP image encoder (`image_encoder`).

Each file holds the model, its configuration as data and the ``from_*`` constructors that load it through
`loaders`. Nothing here samples, reads media or knows how it is launched.
"""
