// Reads a model file by path, as a JVM serving stack would, and prints its SHA-256.
// Used by tests/test_mount_integration.py to read through a modelfs mount.

import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.HexFormat;

public class ReadModel {
    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: java ReadModel FILE");
            System.exit(2);
        }
        MessageDigest digest = MessageDigest.getInstance("SHA-256");
        long total = 0;
        try (InputStream in = Files.newInputStream(Path.of(args[0]))) {
            byte[] buf = new byte[1 << 20];
            int n;
            while ((n = in.read(buf)) > 0) {
                digest.update(buf, 0, n);
                total += n;
            }
        }
        System.out.println(HexFormat.of().formatHex(digest.digest()) + " " + total);
    }
}
