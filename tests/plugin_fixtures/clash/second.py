def getAuthHeader():
    return "X-Other-User"
