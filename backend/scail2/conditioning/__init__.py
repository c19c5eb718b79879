"""What goes into a generation: reading and writing media (`media`), colour masks and their 28-channel compression
(`masks`), windows over long driving clips (`segments`), and the generation request with its validation and the
official resize (`request`).
"""
