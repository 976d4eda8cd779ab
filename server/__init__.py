"""cnnserve.server"""
