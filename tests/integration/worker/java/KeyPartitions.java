// Prints "key<TAB>partition" for every key on stdin, as the Java producer places keyed records
// (BuiltInPartitioner.partitionForKey: toPositive(murmur2(keyBytes)) % numPartitions).
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;

public class KeyPartitions {
    public static void main(String[] args) throws Exception {
        int partitions = Integer.parseInt(args[0]);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String key; (key = in.readLine()) != null; ) {
            byte[] bytes = key.getBytes(StandardCharsets.UTF_8);
            System.out.println(key + "\t" + BuiltInPartitioner.partitionForKey(bytes, partitions));
        }
    }
}
